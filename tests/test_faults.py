"""Nothing lost: signals, kills inside saves, full disks, hostile checkpoints and bad data."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import bad_checkpoint, make_image_folder, png_header_only, sigint_as_ctrl_c
from alexnet_onnx.runtime.atomic import atomic_write, clean_temp_files
from alexnet_onnx.train.cli import main as train_main

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    make_image_folder(root / "train", ["a", "b"], per_class=8, size=(32, 32), seed=3)
    return root


def train_cmd(data: Path, out: Path, epochs: int, *extra) -> list[str]:
    return [str(BIN / "train-alexnet"), "--dataset", "folder", "--data-dir", str(data), "--arch", "alexnet_cifar",
            "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.01", "--val-fraction", "0.25", "--out", str(out), *extra]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow  # an 8-epoch run interrupted, then resumed to the end
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_exits_130_and_run_resumes(small_data, tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen(train_cmd(small_data, out, 8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_ctrl_c)
    wait_for(out / "last.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    epoch = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 8
    resumed = subprocess.run(train_cmd(small_data, out, 8, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {epoch}/8" in resumed.stderr
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 8


# train-alexnet in a child process whose os.fsync, on the temp file of a save that replaces an
# existing last.pt, creates the marker (argv[1]) and waits to be killed: the kill lands inside a
# real save, after its bytes are written and before the rename. The hook lives in this test only.
PAUSED_IN_SAVE = """
import os, sys, time
marker, real_fsync = sys.argv[1], os.fsync

def fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if os.path.basename(name).startswith(".last.pt.tmp-") and os.path.exists(os.path.join(os.path.dirname(name), "last.pt")):
        real_fsync(fd)
        open(marker, "x").close()
        while True:
            time.sleep(1)
    return real_fsync(fd)

os.fsync = fsync
from alexnet_onnx.train.cli import main
main(sys.argv[2:], prog_name="train-alexnet")
"""


@pytest.mark.slow  # a run killed inside a save, then resumed to the end
def test_sigkill_inside_a_save_keeps_the_previous_checkpoint(small_data, tmp_path):
    """Killed after the new last.pt's bytes are written but before the rename: the previous
    last.pt is intact, and the next run removes the temp file and carries on."""
    out, marker = tmp_path / "out", tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_IN_SAVE, str(marker), *train_cmd(small_data, out, 3)[1:]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(marker, proc)
    before = (out / "last.pt").read_bytes()
    temps = list(out.glob(".last.pt.tmp-*"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the kill lands inside the save
    proc.kill()
    proc.wait()
    assert (out / "last.pt").read_bytes() == before
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    resumed = subprocess.run(train_cmd(small_data, out, 3, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1/3" in resumed.stderr
    assert not list(out.glob(".*.tmp-*"))
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


def test_two_writers_of_one_path_at_once_both_succeed(tmp_path):
    """The second write starts (and cleans up after killed writers) while the first is half
    written; both finish, and the file is one writer's whole content."""
    target = tmp_path / "shared.bin"
    contents = [bytes([n]) * 100_000 for n in (1, 2)]
    first_writing, second_writing = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write_first(f):
        f.write(contents[0][:50_000])
        f.flush()
        first_writing.set()
        assert second_writing.wait(30)
        f.write(contents[0][50_000:])

    def write_second(f):
        second_writing.set()
        f.write(contents[1])

    def run(write):
        try:
            atomic_write(target, write)
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=run, args=(write_first,))
    first.start()
    assert first_writing.wait(30)
    second = threading.Thread(target=run, args=(write_second,))
    second.start()
    first.join(60)
    second.join(60)
    assert not errors, errors
    assert target.read_bytes() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


WRITES_UNTIL_KILLED = """
import sys, time
from pathlib import Path
from alexnet_onnx.runtime.atomic import atomic_write

def write(f):
    f.write(b"never finished")
    f.flush()
    Path(sys.argv[2]).touch()
    time.sleep(600)

atomic_write(Path(sys.argv[1]), write)
"""


def test_only_temp_files_of_dead_writers_are_removed(tmp_path):
    target, marker = tmp_path / "data.bin", tmp_path / "writing"
    target.write_bytes(b"previous")
    proc = subprocess.Popen([sys.executable, "-c", WRITES_UNTIL_KILLED, str(target), str(marker)])
    try:
        wait_for(marker, proc)
        (temp,) = tmp_path.glob(".data.bin.tmp-*")
        assert clean_temp_files(tmp_path) == 0 and temp.exists()  # its writer lives
        atomic_write(target, lambda f: f.write(b"mine"))
        assert temp.exists() and target.read_bytes() == b"mine"
    finally:
        proc.kill()
        proc.wait()
    assert clean_temp_files(tmp_path) == 1 and not temp.exists()
    lookalike = tmp_path / ".data.bin.tmp-mine"  # not a name atomic_write makes: never touched
    lookalike.write_bytes(b"")
    assert clean_temp_files(tmp_path) == 0 and lookalike.exists()


def limited_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow  # two training processes
def test_full_disk_during_save_exits_4_and_keeps_previous_checkpoint(small_data, tmp_path):
    out = tmp_path / "out"
    first = subprocess.run(train_cmd(small_data, out, 1), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = (out / "last.pt").read_bytes()
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    cfg["epochs"] = 2  # pretend the run was meant to be longer, so --resume trains and saves again
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["config"] = cfg
    torch.save(ckpt, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    proc = subprocess.run(train_cmd(small_data, out, 2, "--resume"), capture_output=True, text=True,
                          preexec_fn=limited_file_size(1_000_000))
    assert proc.returncode == 4, proc.stderr
    assert "cannot write" in proc.stderr and "unchanged" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp-*"))


def test_full_disk_during_export_exits_4_and_writes_nothing(trained_run, tmp_path):
    target = tmp_path / "m.onnx"
    proc = subprocess.run([str(BIN / "export-onnx"), str(trained_run / "best.pt"), "-o", str(target)],
                          capture_output=True, text=True, preexec_fn=limited_file_size(1_000_000))
    assert proc.returncode == 4, proc.stderr
    assert not target.exists() and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("kind", ["truncated", "random", "lfs", "malicious", "nan", "state-dict-only"])
def test_resume_from_hostile_or_wrong_checkpoint_exits_3(kind, trained_run, tiny_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.move(bad_checkpoint(kind, tmp_path, trained_run), out / "last.pt")
    if kind == "nan":  # a run that is not finished yet, so resuming really loads the weights
        ckpt = torch.load(out / "last.pt", weights_only=True)
        ckpt["config"]["epochs"] = 3
        torch.save(ckpt, out / "last.pt")
    args = ["--dataset", "folder", "--data-dir", tiny_folder, "--arch", "alexnet_cifar", "--epochs", 3,
            "--out", out, "--resume"]
    result = CliRunner().invoke(train_main, [str(a) for a in args])
    assert result.exit_code == 3, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "last.pt" in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_resume_with_other_classes_exits_3(trained_run, tmp_path):
    data = make_image_folder(tmp_path / "data" / "train", ["x", "y"], 4).parent
    out = tmp_path / "out"
    out.mkdir()
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    ckpt["config"]["epochs"] = 3
    torch.save(ckpt, out / "last.pt")
    args = ["--dataset", "folder", "--data-dir", data, "--arch", "alexnet_cifar", "--epochs", 3, "--out", out, "--resume"]
    result = CliRunner().invoke(train_main, [str(a) for a in args])
    assert result.exit_code == 3 and "classes" in result.stderr


def test_bad_images_in_training_data_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "train", ["a", "b"], per_class=6, size=(32, 32))
    (data / "train" / "a" / "garbage.jpg").write_bytes(os.urandom(500))
    (data / "train" / "b" / "empty.png").write_bytes(b"")
    png_header_only(data / "train" / "b" / "bomb.png", 40000, 40000)
    good = data / "train" / "a" / "000.png"
    (data / "train" / "a" / "truncated.png").write_bytes(good.read_bytes()[:60])
    args = ["--dataset", "folder", "--data-dir", data, "--arch", "alexnet_cifar", "--epochs", 1, "--batch-size", 8,
            "--val-fraction", "0", "--out", tmp_path / "out"]
    result = CliRunner().invoke(train_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "skipped 4 unreadable images" in result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["bad_images"] == 4
    strict = CliRunner().invoke(train_main, [str(a) for a in args] + ["--max-bad-images", "3", "--out", str(tmp_path / "o2")])
    assert strict.exit_code == 3 and "--max-bad-images 3" in strict.stderr


def test_model_with_external_data_is_refused(exported_model, tmp_path):
    import onnx

    from alexnet_onnx.runtime.cli import main as predict_main

    model = onnx.load(str(exported_model))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    result = CliRunner().invoke(predict_main, ["-m", str(tmp_path / "ext.onnx"), str(tmp_path / "x.png")])
    assert result.exit_code == 3 and "external data" in result.stderr


def test_resume_with_corrupt_saved_config_exits_3(trained_run, tiny_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    ckpt["config"] = {"arch": "alexnet_cifar", "dataset": "folder"}  # required keys missing
    torch.save(ckpt, out / "last.pt")
    args = ["--dataset", "folder", "--data-dir", tiny_folder, "--arch", "alexnet_cifar", "--epochs", 3, "--out", out, "--resume"]
    result = CliRunner().invoke(train_main, [str(a) for a in args])
    assert result.exit_code == 3 and "saved config is invalid" in result.stderr
