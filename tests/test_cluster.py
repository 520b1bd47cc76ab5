"""onnx-predict --ray: one row builder for every output; OUT records the settings that made it and
a rerun continues it only with those; a Ray Data pipeline gives the rows local onnx-predict gives,
survives killed workers and actors, continues an interrupted run, spreads over the nodes of a
cluster, and says what to set when the cluster wants a token."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_image_folder, sigint_as_ctrl_c

pytest.importorskip("pyarrow", reason="the cluster extra is not installed: pip install '.[cluster]'")

from alexnet_onnx.runtime.classify import Writer  # noqa: E402
from alexnet_onnx.runtime.cluster_settings import RunSettings  # noqa: E402
from alexnet_onnx.runtime.cluster_store import SETTINGS_KEY, RowStore  # noqa: E402
from alexnet_onnx.runtime.errors import DataError, UsageError  # noqa: E402
from alexnet_onnx.runtime.predictor import Prediction  # noqa: E402
from alexnet_onnx.runtime.rows import Result, json_line, result_from_row, result_row  # noqa: E402

BIN = Path(sys.executable).parent
EXE = str(BIN / "onnx-predict")
HANG = 600  # seconds after which a run counts as hung; loaded CI machines need minutes to start Ray
# --ray itself needs Ray; tests that start it are also marked slow (seconds to minutes on a
# loaded 2-core machine).
needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="the cluster extra is not installed: pip install '.[cluster]'")


def cli(*args: str, timeout: float = HANG, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=sigint_as_ctrl_c)


def rows_of(path: Path) -> list[dict]:
    return list(RowStore(path).rows())


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


def one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code and len(proc.stderr.strip().splitlines()) == 1, (proc.returncode, proc.stderr)
    return proc.stderr


# ---------------------------------------------------------------------------------------------
# One row builder


PREDICTION = Prediction(label="cat", score=0.75, index=0, top_k=(("cat", 0.75), ("dog\x1b[2J", 0.25)))


def test_every_output_format_is_written_from_the_one_row(tmp_path):
    good = Result(Path("/p/caf\u00e9 \udcff.jpg"), prediction=PREDICTION)
    bad = Result("s3://b/x.jpg", error="s3://b/x.jpg: not an image\x07")
    expected = {"path": "/p/caf\u00e9 \udcff.jpg", **PREDICTION.to_dict()}
    assert list(expected)[:4] == ["path", "label", "score", "top_k"]
    assert expected["top_k"] == [{"label": "cat", "score": 0.75}, {"label": "dog\x1b[2J", "score": 0.25}]
    assert result_row(good) == expected
    assert result_row(bad) == {"path": "s3://b/x.jpg", "error": "s3://b/x.jpg: not an image\\x07"}
    outputs = {}
    for fmt in ("json", "csv", "text"):
        out, err = io.StringIO(), io.StringIO()
        writer = Writer(fmt, out, err)
        writer.write(good)
        writer.write(bad)
        outputs[fmt] = (out.getvalue(), err.getvalue())
    # JSON: json.dumps of the row with ASCII escapes, byte for byte.
    assert outputs["json"][0] == json.dumps(expected) + "\n" + json_line(bad) + "\n"
    assert outputs["json"][0].isascii()
    table = list(csv.reader(io.StringIO(outputs["csv"][0])))
    assert table == [["path", "rank", "label", "score", "error", "accepted"],
                     ["/p/caf\u00e9 \\xff.jpg", "1", "cat", "0.750000", "", "true"],
                     ["/p/caf\u00e9 \\xff.jpg", "2", "dog\\x1b[2J", "0.250000", "", "true"],
                     ["s3://b/x.jpg", "", "", "", "s3://b/x.jpg: not an image\\x07", ""]]
    assert outputs["text"] == ("/p/caf\u00e9 \\xff.jpg\tcat 0.7500 | dog\\x1b[2J 0.2500\n",
                               "error: s3://b/x.jpg: not an image\\x07\n")
    # The cluster's Parquet holds every field of the row (its JSON lines are json_line's).
    store = RowStore(tmp_path / "rows.parquet")
    store.open(settings(), overwrite=False)
    good_utf8 = Result("/p/caf\u00e9.jpg", prediction=PREDICTION)
    store.write_part([json_line(good_utf8), json_line(bad)])
    store.finish()
    assert list(store.rows()) == [result_row(good_utf8), result_row(bad)]


def test_a_row_reads_back_as_the_result_it_came_from_and_another_models_row_is_refused():
    labels = ("cat", "dog\x1b[2J")
    good = Result("/p/a.jpg", prediction=PREDICTION)
    assert result_from_row(json.loads(json_line(good)), labels) == good
    bad = Result("/p/b.jpg", error="/p/b.jpg: truncated")
    assert result_from_row(result_row(bad), labels) == bad
    with pytest.raises(DataError, match="label 'cat', which the model does not have"):
        result_from_row(result_row(good), ("airplane", "ship"))


# ---------------------------------------------------------------------------------------------
# OUT and its settings (pyarrow only)


def settings(top_k: int = 1, decode: str = "exact", sha: str = "a" * 64) -> RunSettings:
    return RunSettings(sha, top_k, decode, "m.onnx")


def row_line(path: str, label: str = "a") -> str:
    return json.dumps({"path": path, "label": label, "score": 0.5, "top_k": [{"label": label, "score": 0.5}]})


def run_store(out: Path, lines: list[str], used: RunSettings, overwrite: bool = False) -> RowStore:
    store = RowStore(out)
    store.open(used, overwrite=overwrite)
    store.write_part(lines)
    store.finish()
    return store


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_output_streams_back_every_row_in_order_across_batches(tmp_path, suffix):
    """OUT is read a batch at a time (10,000 rows for Parquet): rows come back whole and in order
    across batch and part boundaries, error rows with only their fields."""
    store = RowStore(tmp_path / f"rows{suffix}")
    store.open(settings(), overwrite=False)
    good = [{"path": f"/p/{i}.jpg", "label": "a", "score": 0.5, "top_k": [{"label": "a", "score": 0.5}]}
            for i in range(25_000)]
    bad = {"path": "/p/bad.jpg", "error": "/p/bad.jpg: no such file"}
    lines = [json.dumps(row) for row in good + [bad]]
    store.write_part(lines[:12_000])
    store.write_part(lines[12_000:])
    store.finish()
    rows = store.rows()
    assert next(rows) == good[0]  # a generator: the first row before the rest is read
    assert list(rows) == good[1:] + [bad]
    assert list(store.rows({"/p/7.jpg", "/p/bad.jpg", "/p/absent.jpg"})) == [good[7], bad]


def test_settings_are_the_model_files_hash_top_k_and_decode(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    first = RunSettings.of(model, top_k=2, decode="fast")
    assert first == RunSettings.of(model, top_k=2, decode="fast")
    assert first != RunSettings.of(model, top_k=3, decode="fast") and first != RunSettings.of(model, top_k=2, decode="exact")
    model.write_bytes(b"model bytez")
    assert first != RunSettings.of(model, top_k=2, decode="fast")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_out_records_its_settings_and_a_rerun_with_others_is_refused(tmp_path, suffix):
    import pyarrow.parquet as pq

    out = tmp_path / f"rows{suffix}"
    run_store(out, [row_line("/p/1.jpg")], settings(top_k=1))
    if suffix == ".parquet":
        recorded = json.loads(pq.read_schema(out).metadata[SETTINGS_KEY])
    else:  # JSON lines stay exactly --format json's lines; the settings sit beside them
        assert out.read_text() == row_line("/p/1.jpg") + "\n"
        recorded = json.loads(out.with_name(out.name + ".settings.json").read_text())
    assert recorded == {"model_sha256": "a" * 64, "top_k": 1, "decode": "exact", "model": "m.onnx"}
    for other, named in ((settings(top_k=3), "top-k 1 (this run: 3)"), (settings(decode="fast"), "decode exact"),
                         (settings(sha="b" * 64), "model m.onnx sha256 aaaaaaaaaaaa")):
        with pytest.raises(UsageError, match=r"made with other settings: .*add --overwrite") as refused:
            RowStore(out).open(other, overwrite=False)
        assert named in str(refused.value)
    again = RowStore(out)
    again.open(settings(top_k=1), overwrite=False)  # the same settings continue it
    assert again.done(["/p/1.jpg", "/p/2.jpg"]) == {"/p/1.jpg"}


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_overwrite_replaces_out_only_when_the_new_run_finishes(tmp_path, suffix):
    out = tmp_path / f"rows{suffix}"
    run_store(out, [row_line("/p/old.jpg"), row_line("/p/both.jpg")], settings(top_k=1))
    new = RowStore(out)
    new.open(settings(top_k=2), overwrite=True)
    assert new.done(["/p/old.jpg", "/p/both.jpg"]) == set()  # OUT's rows no longer count
    new.write_part([row_line("/p/both.jpg", "b")])
    # Killed here: OUT still holds the old rows; the unfinished run keeps its settings.
    assert [r["path"] for r in rows_of(out)] == ["/p/old.jpg", "/p/both.jpg"]
    with pytest.raises(UsageError, match="an unfinished run with other settings: top-k 2 \\(this run: 1\\)"):
        RowStore(out).open(settings(top_k=1), overwrite=False)
    resumed = RowStore(out)
    resumed.open(settings(top_k=2), overwrite=False)
    assert resumed.done(["/p/old.jpg", "/p/both.jpg", "/p/new.jpg"]) == {"/p/both.jpg"}
    resumed.write_part([row_line("/p/new.jpg", "b")])
    resumed.finish()
    assert rows_of(out) == [json.loads(row_line("/p/both.jpg", "b")), json.loads(row_line("/p/new.jpg", "b"))]
    assert RowStore(out).recorded() == settings(top_k=2)
    assert not out.with_name(out.name + ".parts").exists()


def test_out_that_records_no_settings_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text(row_line("/p/1.jpg") + "\n")
    with pytest.raises(UsageError, match="records no settings .* add --overwrite"):
        RowStore(out).open(settings(), overwrite=False)
    run_store(out, [row_line("/p/2.jpg")], settings(), overwrite=True)
    assert [r["path"] for r in rows_of(out)] == ["/p/2.jpg"]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_killed_while_merging_is_finished_by_the_rerun_each_path_once(tmp_path, monkeypatch, suffix, overwrite):
    """Killed after OUT was replaced, while the parts were being removed: the same command
    finishes with every row once, whether OUT's earlier rows counted or not."""
    out = tmp_path / f"rows{suffix}"
    run_store(out, [row_line(f"/p/{i}.jpg") for i in range(3)], settings())
    store = RowStore(out)
    store.open(settings(), overwrite=overwrite)
    named = [f"/p/{i}.jpg" for i in range(1, 6)]
    todo = [p for p in named if p not in store.done(named)]
    for path in todo:
        store.write_part([row_line(path, "b")])
    real_unlink = Path.unlink

    def killed_on_second_part(self, *args, **kwargs):
        if self.name.startswith("part-") and not killed_on_second_part.passed:
            killed_on_second_part.passed = True
            return real_unlink(self, *args, **kwargs)
        if self.name.startswith("part-"):
            raise KeyboardInterrupt
        return real_unlink(self, *args, **kwargs)

    killed_on_second_part.passed = False
    monkeypatch.setattr(Path, "unlink", killed_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        store.finish()
    monkeypatch.setattr(Path, "unlink", real_unlink)  # only this: undo() would drop the network guard too
    rerun = RowStore(out)
    rerun.open(settings(), overwrite=False)
    assert rerun.done(named) == set(named)
    rerun.finish()
    rows = rows_of(out)
    paths = [r["path"] for r in rows]
    expected = (["/p/0.jpg"] if not overwrite else []) + named
    assert sorted(paths) == sorted(expected) and len(set(paths)) == len(paths)
    assert {r["path"]: r["label"] for r in rows}["/p/5.jpg"] == "b"


def test_the_store_needs_no_ray(tmp_path):
    script = ("import sys; from alexnet_onnx.runtime.cluster_store import RowStore\n"
              "from alexnet_onnx.runtime.cluster_settings import RunSettings\n"
              f"s = RowStore(__import__('pathlib').Path({str(tmp_path / 'o.parquet')!r}))\n"
              "s.open(RunSettings('a' * 64, 1, 'exact'), overwrite=False)\n"
              "s.write_part(['{\"path\": \"/x\", \"error\": \"/x: bad\"}']); s.finish()\n"
              "assert [r['path'] for r in s.rows()] == ['/x']\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Through onnx-predict, refused before Ray starts


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


@needs_ray
def test_bad_model_and_bad_options_are_refused_before_the_cluster_does_any_work(tmp_path, corpus):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    # An address where nothing listens: had the driver tried it first, the error would be about
    # the connection (exit 4), not about the model (exit 3).
    proc = cli("-m", str(bad), "--ray", "127.0.0.1:9", str(corpus), "--output", str(tmp_path / "o.jsonl"))
    assert "bad.onnx" in one_line_error(proc, 3)
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.parts").exists()
    for args in (["--output", str(tmp_path / "o.jsonl")],  # --output without --ray
                 ["--ray", "local"],  # no --output
                 ["--ray", "local", "--output", str(tmp_path / "o.csv")],
                 ["--overwrite"]):  # --overwrite without --ray and --output
        one_line_error(cli("-m", str(bad), str(corpus), *args), 2)


@needs_ray
def test_a_rerun_with_other_settings_is_refused_before_ray_starts(exported_model, corpus, tmp_path):
    out = tmp_path / "rows.jsonl"
    run_store(out, [row_line(str(corpus / "photos" / "a" / "000.png"))],
              RunSettings.of(exported_model, top_k=1, decode="exact"))
    before = out.read_bytes()
    # The address is where nothing listens: a refusal must come before any connection.
    for args, named in ((["--top-k", "2"], "top-k 1 (this run: 2)"), (["--decode", "fast"], "decode exact"),
                        (["--eval", str(corpus / "photos")], "top-k 1 (this run: 3)")):
        inputs = [] if "--eval" in args else [str(corpus / "photos")]
        proc = cli("-m", str(exported_model), "--ray", "127.0.0.1:9", *inputs, "--output", str(out), *args)
        assert named in one_line_error(proc, 2) and "--overwrite" in proc.stderr
    assert out.read_bytes() == before


@needs_ray
def test_parquet_refuses_file_names_it_cannot_hold_before_ray_starts(exported_model, tmp_path):
    name = os.fsdecode(b"bad-\xff.png")
    Image.new("RGB", (8, 8)).save(tmp_path / name)
    proc = cli("-m", str(exported_model), "--ray", "127.0.0.1:9", str(tmp_path / name),
               "--output", str(tmp_path / "o.parquet"))
    assert "not UTF-8" in one_line_error(proc, 2) and "OUT.jsonl" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Ray runs


@pytest.fixture(scope="module")
def photos24(tmp_path_factory) -> list[Path]:
    """24 photos of 640x480, linked many times over to make a run long enough to interrupt."""
    root = tmp_path_factory.mktemp("photos24")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        path = root / f"src{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def linked(folder: Path, photos: list[Path], n: int) -> Path:
    """`n` distinct paths in `folder`, symlinks to `photos` in turn."""
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:05d}.jpg").symlink_to(photos[i % len(photos)])
    return folder


@pytest.mark.slow
@needs_ray
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

    fresh = cli("-m", str(exported_model), "--ray", "local", str(photos / "a"), "--output", str(out), "--top-k", "3",
                "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    rows = rows_of(out)
    assert len(rows) == 12 and all(len(r["top_k"]) == 3 for r in rows)


def descendants(root: int) -> dict[int, str]:
    """Processes below `root` (its local Ray's raylet and workers) and their titles; other Ray
    instances on the machine (a parallel test worker's) are left out."""
    parent, title = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            title[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False

    return {pid: text for pid, text in title.items() if below(pid)}


KILL_TITLES = {"decode task": "ray::MapBatches(decode_batch)", "actor": "ray::MapWorker(MapBatches(Classifier)).submit"}


def kill_each_once(proc: subprocess.Popen, deadline: float) -> set[str]:
    """SIGKILL one process of each KILL_TITLES while it works, whichever shows first; returns
    which were killed before the run ended."""
    killed: set[str] = set()
    while len(killed) < len(KILL_TITLES) and proc.poll() is None and time.monotonic() < deadline:
        processes = descendants(proc.pid)
        for name, title in KILL_TITLES.items():
            pids = [pid for pid, text in processes.items() if title in text]
            if name not in killed and pids:
                try:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.add(name)
                except ProcessLookupError:
                    pass  # it finished meanwhile: try the next one
        time.sleep(0.02)
    return killed


@pytest.mark.slow
@needs_ray
def test_killed_decode_worker_and_actor_are_retried_without_duplicates(exported_model, photos24, tmp_path):
    """How long a run lasts depends on the machine's load, not on the kills: a run that ends
    before both kills proves nothing, so it is repeated on four times the inputs."""
    for attempt, n in enumerate((1200, 4800, 19200)):
        folder = linked(tmp_path / f"links{attempt}", photos24, n)
        out = tmp_path / f"rows{attempt}.jsonl"
        proc = start("-m", str(exported_model), "--ray", "local", str(folder), "--output", str(out))
        killed = kill_each_once(proc, time.monotonic() + HANG)  # a bound on a hang, not a speed requirement
        _, stderr = proc.communicate(timeout=HANG)
        assert proc.returncode == 0, stderr
        rows = rows_of(out)
        paths = [r["path"] for r in rows]
        assert len(paths) == n and len(set(paths)) == n and all("label" in r for r in rows)
        if killed == set(KILL_TITLES):
            return
    pytest.fail(f"every run ended before both kills (the last killed only: {sorted(killed)})")


@pytest.mark.slow
@needs_ray
def test_interrupted_driver_leaves_whole_parts_and_a_rerun_finishes_the_rest(exported_model, photos24, tmp_path):
    many = linked(tmp_path / "links", photos24, 1200)
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


@pytest.mark.slow
@needs_ray
def test_two_node_cluster_classifies_and_evaluates_on_both_nodes(exported_model, tiny_folder, tmp_path):
    from ray.cluster_utils import Cluster

    # The no-network guard stays: Ray's nodes talk through its C++ core, not Python's socket.
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
        for fmt in ("json", "csv"):
            ev = cli("-m", str(exported_model), "--ray", cluster.address, "--eval", str(test), "--format", fmt)
            assert ev.returncode == 0, ev.stderr
            local = cli("-m", str(exported_model), "--eval", str(test), "--format", fmt)
            assert ev.stdout == local.stdout
    finally:
        cluster.shutdown()


# ---------------------------------------------------------------------------------------------
# A head started with `ray start --head`, as docs/cluster.md says


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(env: dict) -> Iterator[str]:
    """`ray start --head --block` on a free loopback port, as its own process group, stopped by
    signalling that group (not `ray stop`, which stops every Ray on the machine); yields its
    address. Its temp folder is short: Ray's socket paths must fit in 107 bytes."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    log = temp / "head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp), "--block"]
    with open(log, "w") as sink:
        head = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + HANG  # a bound on a hang, not a speed requirement
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert head.poll() is None, f"ray start failed: {log.read_text(errors='replace')[-2000:]}"
            assert time.monotonic() < deadline, "ray start hung"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of the group still there
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@needs_ray
def test_a_head_with_token_authentication_is_one_line_without_the_token_and_works_with_it(
        exported_model, tiny_folder, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["HOME"] = str(home)
    # As on a machine where Ray has run before: the token file makes `ray start --head` use it.
    generated = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                               text=True, timeout=HANG)
    assert generated.returncode == 0 and (home / ".ray" / "auth_token").is_file(), generated.stderr
    test = tiny_folder / "test"
    with ray_head(env) as address:
        out = tmp_path / "rows.jsonl"
        proc = cli("-m", str(exported_model), "--ray", address, str(test), "--output", str(out), env=env)
        message = one_line_error(proc, 2)
        assert f"the Ray cluster at {address} requires token authentication" in message
        assert "export RAY_AUTH_MODE=token" in message and "RAY_AUTH_MODE=disabled" in message
        assert not out.exists()
        proc = cli("-m", str(exported_model), "--ray", address, str(test), "--output", str(out),
                   env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-heads-token"})
        assert "refused this machine's token" in one_line_error(proc, 2) and not out.exists()
        proc = cli("-m", str(exported_model), "--ray", address, str(test), "--output", str(out),
                   env={**env, "RAY_AUTH_MODE": "token"})
        assert proc.returncode == 0, proc.stderr
        assert_same_rows(rows_of(out), local_rows(exported_model, str(test)))
