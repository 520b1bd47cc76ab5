"""runtime/ never imports torch or onnx, directly or indirectly."""

import subprocess
import sys

from conftest import ROOT

FORBIDDEN = ("torch", "torchvision", "onnx")

SCRIPT = """
import sys
from click.testing import CliRunner
from runtime.cli import main
from runtime import Predictor
result = CliRunner().invoke(main, ["-m", sys.argv[1], "--format", "json", sys.argv[2]])
assert result.exit_code == 0, result.output
p = Predictor(sys.argv[1])
p.predict([sys.argv[2]])
import runtime.classify, runtime.evaluate, runtime.inputs, runtime.image, runtime.preprocess, runtime.contract
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden})))
"""


def test_runtime_loads_no_torch_or_onnx(exported_model, tiny_folder):
    image = next((tiny_folder / "test" / "cat").iterdir())
    script = SCRIPT.replace("{forbidden}", repr(set(FORBIDDEN)))
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
