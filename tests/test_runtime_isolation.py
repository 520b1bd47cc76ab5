"""runtime/ never imports torch or onnx, directly or indirectly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

FORBIDDEN = ("torch", "torchvision", "onnx")

SCRIPT = """
import sys
from click.testing import CliRunner
from alexnet_onnx.runtime.cli import main
from alexnet_onnx.runtime import Predictor
result = CliRunner().invoke(main, ["-m", sys.argv[1], "--format", "json", sys.argv[2]])
assert result.exit_code == 0, result.output
p = Predictor(sys.argv[1])
p.predict([sys.argv[2]])
import alexnet_onnx.runtime.classify, alexnet_onnx.runtime.evaluate, alexnet_onnx.runtime.inputs, alexnet_onnx.runtime.image, alexnet_onnx.runtime.preprocess, alexnet_onnx.runtime.contract, alexnet_onnx.runtime.cluster, alexnet_onnx.runtime.cluster_sources, alexnet_onnx.runtime.cluster_store, alexnet_onnx.runtime.rows
import alexnet_onnx.runtime.serve, alexnet_onnx.runtime.serve_app, alexnet_onnx.runtime.serve_batcher, alexnet_onnx.runtime.serve_cli, alexnet_onnx.runtime.serve_models
from alexnet_onnx.runtime.bench_cli import main as bench
result = CliRunner().invoke(bench, [sys.argv[1], "--seconds", "0.001", "--threads", "1", "--batch-size", "1", "--image", sys.argv[2]])
assert result.exit_code == 0, result.output
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden})))
"""


def test_runtime_loads_no_torch_or_onnx(exported_model, tiny_folder):
    """Nor Ray: the cluster extra is imported only by --ray."""
    image = next((tiny_folder / "test" / "cat").iterdir())
    script = SCRIPT.replace("{forbidden}", repr(set(FORBIDDEN + ("ray", "pyarrow"))))
    proc = subprocess.run([sys.executable, "-c", script, str(exported_model), str(image)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"runtime imported: {proc.stdout.strip()}"


def test_runtime_sources_do_not_mention_torch_imports():
    for path in (ROOT / "runtime").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in FORBIDDEN + ("train", "export"), f"{path.name}: {stripped}"


# Imported at start-up by every Python process that gets this PYTHONPATH (driver and Ray workers):
# any attempt to import a forbidden module is written to the log and fails as if not installed.
SITECUSTOMIZE = """
import os, sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {forbidden}:
            with open(os.environ["FORBIDDEN_IMPORT_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
            raise ImportError(f"{name} is forbidden here")
        return None
sys.meta_path.insert(0, _Refuse())
"""


def test_cluster_run_loads_no_torch_or_onnx_on_driver_or_workers(exported_model, tiny_folder, tmp_path):
    pytest.importorskip("ray", reason="the cluster extra is not installed: pip install '.[cluster]'")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.replace("{forbidden}", repr(set(FORBIDDEN))))
    log = tmp_path / "imports.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "FORBIDDEN_IMPORT_LOG": str(log)}
    out = tmp_path / "rows.jsonl"
    exe = str(Path(sys.executable).parent / "onnx-predict")
    proc = subprocess.run([exe, "-m", str(exported_model), "--ray", "local", str(tiny_folder / "test"),
                           "--output", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 12
    assert not log.exists(), f"forbidden imports attempted: {log.read_text()}"


def test_serve_loads_no_torch_or_onnx_while_serving(exported_model, tiny_folder, tmp_path, loopback_only):
    """onnx-serve started, asked to classify, stopped: no forbidden import was even attempted."""
    import http.client
    import re
    import signal
    import time

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.replace("{forbidden}", repr(set(FORBIDDEN + ("ray",)))))
    log, err = tmp_path / "imports.log", tmp_path / "serve.err"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "FORBIDDEN_IMPORT_LOG": str(log)}
    exe = str(Path(sys.executable).parent / "onnx-serve")
    with open(err, "wb") as stderr:
        proc = subprocess.Popen([exe, "-m", str(exported_model), "--port", "0"], stderr=stderr, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(rb"http://127\.0\.0\.1:(\d+)", err.read_bytes())):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", int(found.group(1)), timeout=60)
        conn.request("POST", "/v1/classify", body=next((tiny_folder / "test" / "cat").iterdir()).read_bytes())
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, err.read_text()
    assert not log.exists(), f"forbidden imports attempted: {log.read_text()}"
