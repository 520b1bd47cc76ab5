"""onnx-predict --ray: a Ray Data pipeline gives the rows local onnx-predict gives, survives killed
workers and actors, continues an interrupted run, and spreads over the nodes of a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_image_folder, sigint_as_ctrl_c

pytest.importorskip("ray", reason="the cluster extra is not installed: pip install '.[cluster]'")

EXE = str(Path(sys.executable).parent / "onnx-predict")
HANG = 600  # seconds after which a run counts as hung; loaded CI machines need minutes to start Ray


def cli(*args: str, timeout: float = HANG) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=sigint_as_ctrl_c)


def rows_of(path: Path) -> list[dict]:
    from alexnet_onnx.runtime.cluster import iter_rows

    return list(iter_rows(path))


def local_rows(model: Path, *inputs: str) -> list[dict]:
    proc = cli("-m", str(model), "--format", "json", *inputs)
    assert proc.returncode in (0, 1), proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def assert_same_rows(ours: list[dict], theirs: list[dict]) -> None:
    ours, theirs = sorted(ours, key=lambda r: r["path"]), sorted(theirs, key=lambda r: r["path"])
    assert [r["path"] for r in ours] == [r["path"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys(), (a, b)
        if "error" in b:
            assert a["error"] == b["error"]
            continue
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= 1e-6
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert np.allclose([t["score"] for t in a["top_k"]], [t["score"] for t in b["top_k"]], atol=1e-6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Good images in several formats and sizes, and the odd and bad files a real archive holds."""
    root = tmp_path_factory.mktemp("corpus")
    make_image_folder(root / "photos", ["a", "b"], per_class=12, size=(48, 40), suffix=".png")
    make_image_folder(root / "photos", ["c"], per_class=12, size=(300, 200), suffix=".jpg", seed=3)
    odd = root / "photos" / "odd"
    odd.mkdir()
    Image.new("L", (50, 70), 128).save(odd / "grey.png")
    Image.new("RGBA", (40, 40), (255, 0, 0, 10)).save(odd / "alpha.png")
    Image.new("CMYK", (64, 48), (0, 90, 0, 30)).save(odd / "cmyk.jpg")
    (odd / "junk.jpg").write_bytes(b"not an image at all")
    (odd / "empty.png").write_bytes(b"")
    good = (root / "photos" / "c" / "000.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (odd / "notes.txt").write_text("skipped: no image suffix")
    os.mkfifo(odd / "fifo.jpg")
    return root


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """1,200 distinct paths (symlinks to 24 photos of 640x480): a run long enough to interrupt."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    sources = []
    for i in range(24):
        path = root / f"src{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
        sources.append(path)
    folder = root / "links"
    folder.mkdir()
    for i in range(1200):
        (folder / f"{i:05d}.jpg").symlink_to(sources[i % len(sources)])
    return folder


def test_rows_equal_local_onnx_predict_and_a_rerun_adds_only_new_paths(exported_model, corpus, tmp_path):
    photos = corpus / "photos"
    inputs = [str(photos), str(corpus / "missing.jpg"), f"file://{photos / 'a'}"]
    out = tmp_path / "rows.parquet"
    proc = cli("-m", str(exported_model), "--ray", "local", *inputs, "--output", str(out), "--top-k", "2")
    assert proc.returncode == 1, proc.stderr  # some inputs are bad, the rest are classified
    assert "1 file(s) in the folders have no image suffix" in proc.stderr
    ours = rows_of(out)
    local = local_rows(exported_model, "--top-k", "2", str(photos), str(corpus / "missing.jpg"))
    uri_rows = [r for r in ours if r["path"].startswith("file://")]
    assert len(uri_rows) == 12 and all("label" in r for r in uri_rows)
    assert_same_rows([r for r in ours if not r["path"].startswith("file://")], local)
    failed = {Path(r["path"]).name for r in ours if "error" in r}
    assert failed == {"junk.jpg", "empty.png", "truncated.jpg", "fifo.jpg", "missing.jpg"}
    assert not out.with_name(out.name + ".parts").exists()

    extra = tmp_path / "new.png"
    Image.new("RGB", (40, 40), (0, 200, 0)).save(extra)
    again = cli("-m", str(exported_model), "--ray", "local", *inputs, str(extra), "--output", str(out), "--top-k", "2")
    assert f"1 classified, {len(ours)} already in" in again.stderr, again.stderr
    rows = rows_of(out)
    assert len(rows) == len(ours) + 1 and len({r["path"] for r in rows}) == len(rows)


def test_bad_model_and_bad_options_are_refused_before_the_cluster_does_any_work(tmp_path, corpus):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    started = time.monotonic()
    # An address where nothing listens: the model is refused before any connection is tried.
    proc = cli("-m", str(bad), "--ray", "127.0.0.1:9", str(corpus), "--output", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "o.jsonl").exists()
    for args, code in ((["--output", str(tmp_path / "o.jsonl")], 2),  # --output without --ray
                       (["--ray", "local"], 2),  # no --output
                       (["--ray", "local", "--output", str(tmp_path / "o.csv")], 2)):
        proc = cli("-m", str(bad), str(corpus), *args)
        assert proc.returncode == code and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _ray_processes(title: str, driver: int) -> list[int]:
    """Processes started under this driver (its local Ray's raylet and workers) whose title holds
    `title`; other Ray instances on the machine (a parallel test worker's) are left alone."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    parent, args = {}, {}
    for line in out.splitlines():
        pid, ppid, *rest = line.split(None, 2)
        parent[int(pid)], args[int(pid)] = int(ppid), " ".join(rest)

    def under_driver(pid: int) -> bool:
        while pid > 1:
            if pid == driver:
                return True
            pid = parent.get(pid, 0)
        return False

    return [pid for pid, text in args.items() if title in text and under_driver(pid)]


def _kill_first(title: str, proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline and proc.poll() is None:
        pids = _ray_processes(title, proc.pid)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            return True
        time.sleep(0.05)
    return False


def test_killed_decode_worker_and_actor_are_retried_without_duplicates(exported_model, many, tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = start("-m", str(exported_model), "--ray", "local", str(many), "--output", str(out))
    deadline = time.monotonic() + HANG  # a bound on a hang, not a speed requirement
    killed_task = _kill_first("ray::MapBatches(decode_batch)", proc, deadline)
    killed_actor = _kill_first("ray::MapWorker(MapBatches(Classifier)).submit", proc, deadline)
    _, stderr = proc.communicate(timeout=HANG)
    assert killed_task and killed_actor, "the run ended before both kills"
    assert proc.returncode == 0, stderr
    rows = rows_of(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == 1200 and len(set(paths)) == 1200
    assert all("label" in r for r in rows)


def test_interrupted_driver_leaves_whole_parts_and_a_rerun_finishes_the_rest(exported_model, many, tmp_path):
    out = tmp_path / "rows.jsonl"
    parts = out.with_name(out.name + ".parts")
    proc = start("-m", str(exported_model), "--ray", "local", str(many), "--output", str(out))
    deadline = time.monotonic() + HANG  # a bound on a hang, not a speed requirement
    while not list(parts.glob("part-*.jsonl")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and list(parts.glob("part-*.jsonl")), "no part written before the run ended or hung"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=HANG)
    assert proc.returncode == 130, stderr
    assert not out.exists()
    written = [json.loads(line) for part in parts.glob("part-*.jsonl") for line in part.read_text().splitlines()]
    assert 0 < len(written) < 1200  # whole parts only: every line parses
    again = cli("-m", str(exported_model), "--ray", "local", str(many), "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{1200 - len(written)} classified, {len(written)} already in" in again.stderr
    paths = [r["path"] for r in rows_of(out)]
    assert len(paths) == 1200 and len(set(paths)) == 1200 and not parts.exists()


def test_two_node_cluster_classifies_and_evaluates_on_both_nodes(exported_model, tiny_folder, tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.undo()  # the autouse no-network guard: Ray's nodes talk over localhost
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        test = tiny_folder / "test"
        out = tmp_path / "rows.jsonl"
        proc = cli("-m", str(exported_model), "--ray", cluster.address, str(test), "--output", str(out),
                   "--batch-size", "2")
        assert proc.returncode == 0, proc.stderr
        assert "ran on 2 node(s)" in proc.stderr, proc.stderr
        assert_same_rows(rows_of(out), local_rows(exported_model, str(test)))
        ev = cli("-m", str(exported_model), "--ray", cluster.address, "--eval", str(test), "--format", "json")
        assert ev.returncode == 0, ev.stderr
        local = cli("-m", str(exported_model), "--eval", str(test), "--format", "json")
        assert json.loads(ev.stdout) == json.loads(local.stdout)
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_output_streams_back_every_row_in_order_across_batches(tmp_path, suffix):
    """OUT is read a batch at a time (10,000 rows for Parquet): rows come back whole and in order
    across batch and part boundaries, error rows with only their fields."""
    from alexnet_onnx.runtime.cluster import Output, iter_rows

    out = Output(tmp_path / f"rows{suffix}")
    good = [{"path": f"/p/{i}.jpg", "label": "a", "score": 0.5, "top_k": [{"label": "a", "score": 0.5}]}
            for i in range(25_000)]
    bad = {"path": "/p/bad.jpg", "error": "/p/bad.jpg: no such file"}
    lines = [json.dumps(row) for row in good + [bad]]
    out.write_part(lines[:12_000])
    out.write_part(lines[12_000:])
    assert out.finish() == 25_001
    rows = iter_rows(out.path)
    assert next(rows) == good[0]  # a generator: the first row before the rest is read
    assert list(rows) == good[1:] + [bad]
