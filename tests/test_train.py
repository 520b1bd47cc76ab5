"""train-alexnet: data sources, splits, weights loading, checkpoints, resume, errors."""

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import CIFAR_CLASSES, make_image_folder, write_cifar_pickles
from alexnet_onnx.train.cli import main
from alexnet_onnx.train.config import TrainConfig
from alexnet_onnx.train.data import load_splits
from alexnet_onnx.train.loop import train
from alexnet_onnx.train.models import IMAGENET_WEIGHTS_FILE, build_model


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tiny_args(data_dir, out, *extra, dataset="folder", epochs=1):
    return ["--dataset", dataset, "--data-dir", data_dir, "--arch", "alexnet_cifar", "--epochs", epochs,
            "--batch-size", 16, "--out", out, *extra]


@pytest.mark.parametrize("nested", [True, False], ids=["DIR/cifar-10-batches-py", "DIR itself"])
def test_cifar10_from_python_pickles(tmp_path, nested):
    folder = tmp_path / "cifar" / ("cifar-10-batches-py" if nested else "")
    write_cifar_pickles(folder)
    result = run_cli(*tiny_args(tmp_path / "cifar", tmp_path / "out", "--limit-train", 40, dataset="cifar10"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train_images"] == 40 and 0 <= metrics["best_val_top1"] <= 1
    assert 0 <= metrics["test_top1"] <= 1 and metrics["test_images"] == 20
    assert len(metrics["history"]) == 1 and metrics["history"][0]["img_per_s"] > 0
    for name in ("best.pt", "last.pt", "curves.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    ckpt = torch.load(tmp_path / "out" / "best.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "contract"} <= set(ckpt)
    assert json.loads(ckpt["contract"]["labels"]) == CIFAR_CLASSES
    assert json.loads(ckpt["contract"]["metrics"])["test_top1"] == metrics["test_top1"]


def test_cifar10_offline_without_data_fails_with_one_line(tmp_path):
    result = run_cli(*tiny_args(tmp_path / "empty", tmp_path / "out", dataset="cifar10"))
    assert result.exit_code == 3
    assert "download failed" in result.stderr and "cifar-10-batches-py" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_flowers_offline_without_data_fails_with_one_line(tmp_path):
    result = run_cli(*tiny_args(tmp_path / "flowers", tmp_path / "out", dataset="flowers"))
    assert result.exit_code == 3 and "flower_photos.tgz" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


KILL_INSIDE_THE_FLOWERS_SPLIT = """
import os, pathlib, signal, sys, tarfile
import torchvision.datasets.utils as tv

def fetch(url, root, remove_finished=False, **kwargs):
    with tarfile.open(sys.argv[1]) as tar:
        tar.extractall(root, filter="data")

tv.download_and_extract_archive = fetch
moves, rename = [], pathlib.Path.rename

def killing_rename(self, target):  # SIGKILL once the split has moved 12 of the 20 photos
    moves.append(self)
    if len(moves) == 12:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)

pathlib.Path.rename = killing_rename
from alexnet_onnx.train.data import load_splits
load_splits("flowers", pathlib.Path(sys.argv[2]), val_fraction=0.1, limit_train=None, seed=0)
"""


@pytest.fixture()
def flowers_archive(tmp_path, monkeypatch):
    """A flower_photos.tgz of two classes of 10 photos, served by torchvision's downloader."""
    import tarfile

    import torchvision.datasets.utils as tv

    photos = make_image_folder(tmp_path / "unpacked" / "flower_photos", ["daisy", "roses"], 10, suffix=".jpg")
    (photos / "LICENSE.txt").write_text("CC-BY")
    archive = tmp_path / "flower_photos.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photos, arcname="flower_photos")

    def fetch(url, root, remove_finished=False, **kwargs):
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")

    monkeypatch.setattr(tv, "download_and_extract_archive", fetch)
    return archive


def test_flowers_download_splits_80_20_and_leaves_only_the_splits(flowers_archive, tmp_path):
    data = tmp_path / "flowers"
    splits = load_splits("flowers", data, val_fraction=0.1, limit_train=None, seed=0)
    assert splits.classes == ["daisy", "roses"] and splits.val_name == "val/"
    assert len(splits.train) == 16 and len(splits.val) == 4
    assert sorted(p.name for p in data.iterdir()) == ["train", "val"]


def test_a_flowers_download_killed_mid_split_leaves_no_train_folder_and_the_next_run_completes(flowers_archive, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "flowers"
    killed = subprocess.run([sys.executable, "-c", KILL_INSIDE_THE_FLOWERS_SPLIT, str(flowers_archive), str(data)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert data.is_dir() and not (data / "train").exists() and not (data / "val").exists()
    assert list(data.iterdir()), "the killed run's staging folder is there for the next run to clear"
    splits = load_splits("flowers", data, val_fraction=0.1, limit_train=None, seed=0)
    assert len(splits.train) == 16 and len(splits.val) == 4
    assert sorted(p.name for p in data.iterdir()) == ["train", "val"]


def test_splits_are_seeded_stratified_and_limited(tiny_folder):
    a = load_splits("folder", tiny_folder, val_fraction=0.25, limit_train=9, seed=3)
    b = load_splits("folder", tiny_folder, val_fraction=0.25, limit_train=9, seed=3)
    c = load_splits("folder", tiny_folder, val_fraction=0.25, limit_train=9, seed=4)
    assert a.train.indices == b.train.indices and a.val.indices == b.val.indices
    assert a.val.indices != c.val.indices
    assert not set(a.train.indices) & set(a.val.indices)
    labels = a.train.source.labels
    assert sorted(labels[i] for i in a.train.indices) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(labels[i] for i in a.val.indices) == [0] * 4 + [1] * 4 + [2] * 4
    assert len(a.test) == 12


def test_val_folder_is_used_when_present(tmp_path):
    make_image_folder(tmp_path / "train", ["a", "b"], 3)
    make_image_folder(tmp_path / "val", ["a", "b"], 2)
    splits = load_splits("folder", tmp_path, val_fraction=0.1, limit_train=None, seed=0)
    assert len(splits.train) == 6 and len(splits.val) == 4 and splits.val_name == "val/"


def test_pretrained_weights_load_through_torchvision_cache(torch_home):
    from torchvision.models import alexnet

    reference = alexnet(weights=None).state_dict()
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / IMAGENET_WEIGHTS_FILE)
    model = build_model("alexnet", 5, pretrained=True)
    state = model.state_dict()
    assert torch.equal(state["features.0.weight"], reference["features.0.weight"])
    assert torch.equal(state["classifier.4.weight"], reference["classifier.4.weight"])
    assert state["classifier.6.weight"].shape == (5, 4096)


def test_pretrained_offline_without_cache_says_what_to_do(torch_home):
    from alexnet_onnx.runtime.errors import ModelError

    with pytest.raises(ModelError, match=IMAGENET_WEIGHTS_FILE):
        build_model("alexnet", 5, pretrained=True)


def test_weights_file_must_be_alexnet(tmp_path):
    from alexnet_onnx.runtime.errors import ModelError

    path = tmp_path / "w.pth"
    torch.save({"something": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="not torchvision AlexNet weights"):
        build_model("alexnet", 5, weights=path)


def test_resume_equals_uninterrupted_run(tiny_folder, tmp_path):
    def cfg(out):
        return TrainConfig(dataset="folder", data_dir=str(tiny_folder), arch="alexnet_cifar", epochs=2,
                           batch_size=16, lr=0.02, out=str(out), val_fraction=0.25, seed=7)

    full = train(cfg(tmp_path / "full"), log=lambda m: None)
    train(cfg(tmp_path / "split"), log=lambda m: None, stop_after_epoch=1)
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = train(cfg(tmp_path / "split"), resume=True, log=lambda m: None)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert b["epoch"] == 2 and len(resumed["history"]) == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed["best_val_top1"] == full["best_val_top1"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_resume_of_finished_run_exits_0(trained_run, tiny_folder):
    result = run_cli(*tiny_args(tiny_folder, trained_run, "--resume", epochs=2))
    assert result.exit_code == 0 and "already finished" in result.stderr


def test_resume_with_other_arch_is_refused(trained_run, tiny_folder):
    args = ["--dataset", "folder", "--data-dir", tiny_folder, "--arch", "alexnet", "--epochs", 2, "--out", trained_run, "--resume"]
    result = run_cli(*args)
    assert result.exit_code == 3 and "alexnet_cifar" in result.stderr


def test_resume_without_checkpoint(tmp_path, tiny_folder):
    result = run_cli(*tiny_args(tiny_folder, tmp_path / "new", "--resume"))
    assert result.exit_code == 3 and "last.pt" in result.stderr and "not found" in result.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--limit-train", "0"], "--limit-train"),
    ],
)
def test_invalid_options_exit_2(tiny_folder, tmp_path, extra, message):
    args = tiny_args(tiny_folder, tmp_path / "out") + extra
    result = run_cli(*args)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("batch,world,share", [(32, 4, 8), (30, 1, 30), (30, 4, "28 or 32"), (3, 4, "4$"),
                                               (13, 2, "12 or 14")])
def test_the_global_batch_must_divide_evenly_among_processes(batch, world, share):
    from alexnet_onnx.runtime.errors import UsageError
    from alexnet_onnx.train.config import per_process_batch

    if isinstance(share, int):
        assert per_process_batch(batch, world) == share
    else:
        with pytest.raises(UsageError, match=f"--batch-size {batch} is the global batch .* {world} processes; use {share}"):
            per_process_batch(batch, world)


def test_torchrun_with_an_uneven_batch_exits_2_before_writing(tiny_folder, tmp_path, monkeypatch):
    """Four processes and --batch-size 30: refused with one line naming 28 and 32, nothing written
    (every process refuses alike before any collective, so none waits for another)."""
    from alexnet_onnx.train import distributed

    monkeypatch.setattr(distributed, "setup", lambda device_type: distributed.Dist(rank=0, world=4))
    result = run_cli(*tiny_args(tiny_folder, tmp_path / "out", "--batch-size", 30))
    assert result.exit_code == 2 and "use 28 or 32" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_unknown_arch_names_the_choices(tiny_folder, tmp_path):
    result = run_cli("--dataset", "folder", "--data-dir", tiny_folder, "--arch", "vgg", "--epochs", 1)
    assert result.exit_code == 2 and "alexnet_cifar" in result.stderr


@pytest.mark.parametrize("layout", ["missing", "empty", "one-class"])
def test_unusable_data_fails_before_training(tmp_path, layout):
    data = tmp_path / "data"
    if layout == "empty":
        (data / "train").mkdir(parents=True)
    if layout == "one-class":
        make_image_folder(data / "train", ["only"], 3)
    result = run_cli(*tiny_args(data, tmp_path / "out"))
    assert result.exit_code == 3 and str(data) in result.stderr
    assert not (tmp_path / "out" / "last.pt").exists()


def test_divergence_stops_with_exit_5(tiny_folder, tmp_path):
    result = run_cli(*tiny_args(tiny_folder, tmp_path / "out", "--lr", "1e30", "--warmup-fraction", "0"))
    assert result.exit_code == 5 and "loss became" in result.stderr
    assert not (tmp_path / "out" / "best.pt").exists()


def test_weights_broken_by_an_epochs_last_step_stop_with_exit_5(tiny_folder, tmp_path, monkeypatch):
    """A finite loss can still be followed by a step that breaks the weights: that epoch must not
    be saved over the last good one. The optimizer's last step of epoch 2 (32 images, batches of
    16: two steps an epoch) writes NaN into the weights."""
    real_step, steps = torch.optim.SGD.step, []

    def breaking_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", breaking_step)
    out = tmp_path / "out"
    result = run_cli(*tiny_args(tiny_folder, out, "--limit-train", "32", epochs=3))
    assert result.exit_code == 5 and "weights became NaN/inf in epoch 2" in result.stderr, result.stderr
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert last["rng"] == {"seed": 0, "next_epoch": 1}


def test_unwritable_out_fails_before_training(tiny_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    result = run_cli(*tiny_args(tiny_folder, blocker))
    assert result.exit_code == 4 and "not a directory" in result.stderr
