"""Training features on CPU: the in-memory device store, recipes (mixup/cutmix, EMA, TTA),
freezing and discriminative learning rates, DDP under torchrun with gloo."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_onnx.runtime.image import load_image
from alexnet_onnx.runtime.preprocess import preprocess
from alexnet_onnx.train.augment import Augmentation
from alexnet_onnx.train.batches import Data
from alexnet_onnx.train.config import TrainConfig
from alexnet_onnx.train.data import load_splits
from alexnet_onnx.train.distributed import Dist
from alexnet_onnx.train.loop import train
from alexnet_onnx.train.models import ARCHS, build_model
from alexnet_onnx.train.optim import apply_freeze, make_optimizer, make_scheduler, param_groups
from alexnet_onnx.train.recipes import mix_batch
from alexnet_onnx.train.store import ImageStore

BIN = Path(sys.executable).parent


def cfg_for(data: Path, out: Path, **changes) -> TrainConfig:
    base = dict(dataset="folder", data_dir=str(data), arch="alexnet_cifar", epochs=2, batch_size=16, lr=0.02,
                out=str(out), val_fraction=0.25, seed=5)
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("arch", ["alexnet_cifar", "alexnet"])
def test_eval_store_equals_runtime_preprocessing(tiny_folder, arch):
    spec = ARCHS[arch].preprocess
    splits = load_splits("folder", tiny_folder, val_fraction=0.25, limit_train=None, seed=0)
    store = ImageStore(splits.test, spec, device=torch.device("cpu"))
    x, y, _ = next(store.batches(64))
    expected = np.stack([preprocess(load_image(splits.test.source.paths[i]), spec) for i in splits.test.indices])
    assert x.shape == expected.shape and np.array_equal(x.numpy(), expected)  # bit-identical
    assert y.tolist() == [splits.test.source.labels[i] for i in splits.test.indices]


@pytest.mark.parametrize("arch", ["alexnet_cifar", "alexnet"])
def test_train_store_augments_whole_batches(tiny_folder, arch):
    spec = ARCHS[arch].preprocess
    splits = load_splits("folder", tiny_folder, val_fraction=0.25, limit_train=None, seed=0)
    store = ImageStore(splits.train, spec, device=torch.device("cpu"), augment=Augmentation(ARCHS[arch].augment, spec))
    assert store.images.dtype == torch.uint8 and store.images.shape[-1] == spec.resize
    a = [x for x, _, _ in store.batches(8, torch.Generator().manual_seed(1))]
    b = [x for x, _, _ in store.batches(8, torch.Generator().manual_seed(1))]
    c = [x for x, _, _ in store.batches(8, torch.Generator().manual_seed(2))]
    assert a[0].shape == (8, 3, spec.crop, spec.crop) and torch.isfinite(a[0]).all()
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not torch.equal(a[0], c[0])
    assert sum(len(x) for x in a) == len(splits.train)


def test_mix_batch_targets_are_distributions():
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    for mixup, cutmix in [(0, 0), (0.4, 0), (0, 1.0), (0.2, 1.0)]:
        mixed, target = mix_batch(x, y, 4, mixup=mixup, cutmix=cutmix, smoothing=0.1,
                                  generator=torch.Generator().manual_seed(0))
        assert mixed.shape == x.shape and target.shape == (8, 4)
        assert torch.allclose(target.sum(1), torch.ones(8))
    _, plain = mix_batch(x, y, 4, mixup=0, cutmix=0, smoothing=0.0)
    assert torch.equal(plain.argmax(1), y) and plain.max() == 1


def test_ema_averages_weights_and_batchnorm_statistics_and_copies_counters():
    from alexnet_onnx.train.recipes import EMA

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ema = EMA(model, 0.9)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    model.train()(torch.randn(8, 3, 4, 4) * 2 + 3)  # moves the running statistics, counts a batch
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    now = model.state_dict()
    averaged = ema.model.state_dict()
    for name in ("0.weight", "1.running_mean", "1.running_var"):
        assert not torch.equal(before[name], now[name]), name
        assert torch.allclose(averaged[name], 0.9 * before[name] + 0.1 * now[name]), name
    assert averaged["1.num_batches_tracked"].item() == now["1.num_batches_tracked"].item() == 1


@pytest.mark.slow  # two pipelines x three runs; tests/test_train.py keeps a quick resume check
@pytest.mark.parametrize("cache", ["none", "memory"])
def test_resume_is_exact_for_both_input_pipelines(tiny_folder, tmp_path, cache):
    full = train(cfg_for(tiny_folder, tmp_path / "full", cache=cache, mixup=0.2, ema=0.9), log=lambda m: None)
    train(cfg_for(tiny_folder, tmp_path / "split", cache=cache, mixup=0.2, ema=0.9), log=lambda m: None, stop_after_epoch=1)
    resumed = train(cfg_for(tiny_folder, tmp_path / "split", cache=cache, mixup=0.2, ema=0.9), resume=True, log=lambda m: None)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_ema_and_tta_are_what_gets_validated_and_exported(tiny_folder, tmp_path):
    import onnxruntime as ort

    from alexnet_onnx.export.pipeline import export_checkpoint
    from alexnet_onnx.train.evaluation import FlipAverage

    train(cfg_for(tiny_folder, tmp_path / "run", ema=0.8, tta=True, cutmix=1.0, cache="memory"), log=lambda m: None)
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert "ema" in ckpt and any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 0
    export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "m.onnx", log=lambda m: None, measure_speed=False)
    model = build_model("alexnet_cifar", 3)
    model.load_state_dict(ckpt["ema"])
    x = torch.randn(4, 3, 32, 32)
    expected = FlipAverage(model.eval())(x).detach().numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("arch", ["alexnet_cifar", "alexnet"])
def test_dropout_is_the_archs_unless_given(tiny_folder, tmp_path, arch):
    """--dropout sets every Dropout layer of either arch; without it each keeps its own rate."""
    from alexnet_onnx.runtime.errors import UsageError

    def rates(model):
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    assert cfg_for(tiny_folder, tmp_path, arch=arch).dropout == ARCHS[arch].dropout
    assert rates(build_model(arch, 3)) == {ARCHS[arch].dropout}
    assert rates(build_model(arch, 3, dropout=0.0)) == {0.0}
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(UsageError, match="--dropout"):
            cfg_for(tiny_folder, tmp_path, arch=arch, dropout=bad)


def test_freeze_and_discriminative_learning_rates():
    model = build_model("alexnet", 4)
    apply_freeze(model, "features")
    assert not any(p.requires_grad for p in model.features.parameters())
    cfg = TrainConfig(dataset="folder", data_dir=".", arch="alexnet", epochs=1, lr=0.01, backbone_lr_mult=0.1,
                      weight_decay=1e-4, freeze="features")
    groups = param_groups(model, cfg)
    head = {id(p) for p in model.classifier[6].parameters()}
    for group in groups:
        is_head = all(id(p) in head for p in group["params"])
        assert group["lr"] == pytest.approx(0.01 if is_head else 0.001)
        assert group["weight_decay"] == (1e-4 if group["params"][0].ndim > 1 else 0.0)
    apply_freeze(model, "all-but-head")
    assert {id(p) for p in model.parameters() if p.requires_grad} == head


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays_as_named(schedule):
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(dataset="folder", data_dir=".", arch="alexnet_cifar", epochs=4, lr=0.1,
                      warmup_fraction=0.25, schedule=schedule)
    optimizer = make_optimizer(cfg, model, torch.device("cpu"))
    scheduler = make_scheduler(cfg, optimizer, steps=25)  # 100 steps, 25 of warm-up
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[24] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:24], lrs[1:25]))
    tail = lrs[25:]
    progress = [(s - 25) / 75 for s in range(25, 100)]
    expected = {"cosine": [0.05 * (1 + np.cos(np.pi * p)) for p in progress],
                "linear": [0.1 * (1 - p) for p in progress], "constant": [0.1] * 75}[schedule]
    assert tail == pytest.approx(expected)


@pytest.mark.slow  # 224-px training
def test_frozen_features_do_not_change_in_training(tiny_folder, tmp_path, torch_home):
    from torchvision.models import alexnet

    weights = tmp_path / "w.pth"
    torch.save(alexnet(weights=None).state_dict(), weights)
    cfg = cfg_for(tiny_folder, tmp_path / "run", arch="alexnet", weights=str(weights), freeze="features", epochs=1,
                  limit_train=6, batch_size=6, lr=0.001, backbone_lr_mult=0.1)
    train(cfg, log=lambda m: None, stop_after_epoch=1)
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    start = torch.load(weights, weights_only=True)
    assert torch.equal(trained["features.0.weight"], start["features.0.weight"])
    assert not torch.equal(trained["classifier.1.weight"], start["classifier.1.weight"])


def _torchrun(launchers: list[list[str]], args: list[str]) -> list[str]:
    """Start one torchrun per launcher argument list (together) with `train.cli args`; their stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(BIN / "torchrun"), *launcher, "-m", "alexnet_onnx.train", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parent.parent,
                              start_new_session=True) for launcher in launchers]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-2000:]
            outputs.append(stdout + stderr)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
    return outputs


@pytest.mark.slow  # three torchrun launches
def test_torchrun_one_node_and_two_nodes_train_the_same_weights(tiny_folder, tmp_path):
    """DDP with gloo: 2 processes on one node, then 2 nodes of 1 process each (two torchrun agents
    meeting at a c10d rendezvous on this machine): same global batch, same final weights (with the
    whitening init, which every rank takes from rank 0, and the alternating flip)."""
    args = ["--dataset", "folder", "--data-dir", str(tiny_folder), "--arch", "alexnet_cifar", "--epochs", "2",
            "--batch-size", "16", "--limit-train", "24", "--precision", "fp32", "--init", "whiten", "--flip", "alternate"]
    one = _torchrun([["--standalone", "--nproc_per_node=2"]], [*args, "--out", str(tmp_path / "one")])
    assert "x2 processes" in one[0] and "fp32 training" in one[0] and one[0].count("done:") == 1
    assert one[0].count("first conv: 54 filters whiten") == 1  # computed on each rank, logged by rank 0
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["train_images"] == 24
    ckpt = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=two-nodes"]
    two = _torchrun([node, node], [*args, "--out", str(tmp_path / "two")])
    assert sum(o.count("done:") for o in two) == 1 and any("x2 processes" in o for o in two)
    other = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    assert other.keys() == ckpt["model"].keys()
    for name, value in ckpt["model"].items():
        assert torch.equal(value, other[name]), name


def test_store_shards_have_equal_step_counts(tiny_folder):
    splits = load_splits("folder", tiny_folder, val_fraction=0.0, limit_train=17, seed=0)
    spec = ARCHS["alexnet_cifar"].preprocess
    store = ImageStore(splits.train, spec, device=torch.device("cpu"), augment=Augmentation("pad-crop", spec))
    assert len(store) == 17
    steps = [len(list(store.batches(4, torch.Generator().manual_seed(0), (rank, 2)))) for rank in range(2)]
    assert steps[0] == steps[1] == 3


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    return float(np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                        - np.searchsorted(np.sort(b), grid, "right") / len(b)).max())


@pytest.mark.parametrize("arch, size, translate", [pytest.param("alexnet", (384, 320), None, marks=pytest.mark.slow),
                                                   ("alexnet_cifar", (48, 40), None),
                                                   ("alexnet_cifar", (48, 40), 1)])
def test_both_input_pipelines_draw_the_same_crops(tmp_path, arch, size, translate):
    """--cache is a speed option: the DataLoader and the in-memory store must cut crops from the
    same region with the same size, aspect, position and flip distributions. The photo encodes
    its own coordinates (red = x, green = y), so each output says where it was cut from."""
    from PIL import Image

    w, h = size
    xs, ys = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    photo = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).round().astype(np.uint8))
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(32):
            photo.save(tmp_path / "train" / cls / f"{i}.png")
    spec = ARCHS[arch].preprocess
    mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]

    def windows(cache: str) -> np.ndarray:
        cfg = cfg_for(tmp_path, tmp_path / "out", arch=arch, batch_size=64, val_fraction=0.0, cache=cache, workers=0,
                      translate=translate)
        splits = load_splits("folder", tmp_path, val_fraction=0.0, limit_train=None, seed=0)
        data = Data(splits, cfg, torch.device("cpu"), Dist())
        torch.manual_seed(0)
        rows = []
        for epoch in range(25):
            for x, _, *_ in data.train(torch.Generator().manual_seed(epoch), epoch):
                v = (x * std + mean) * 255  # back to the photo's 0..255 coordinates
                mid = spec.crop // 2
                rows.append(torch.stack([v[:, 0, mid, 0], v[:, 0, mid, -1], v[:, 1, 0, mid], v[:, 1, -1, mid]], 1))
        return torch.cat(rows).numpy()

    store, loader = windows("memory"), windows("none")
    assert len(store) == len(loader) == 25 * 64
    for name, a, b in zip(("left", "right", "top", "bottom"), store.T, loader.T):
        assert _ks(a, b) < 0.08, f"{arch}: crop {name} edges are distributed differently ({_ks(a, b):.3f})"
    flips = [float(np.mean(d[:, 0] > d[:, 1])) for d in (store, loader)]
    assert all(0.42 < f < 0.58 for f in flips), flips


@pytest.mark.parametrize("arch", ["alexnet_cifar", pytest.param("alexnet", marks=pytest.mark.slow)])
def test_alternating_flip_mirrors_each_image_every_other_epoch_in_both_pipelines(tmp_path, arch):
    """--flip alternate: each image is mirrored in every other epoch, from a first epoch that
    mirrors about half of them, and both input pipelines mirror the same images in the same epoch.
    Each photo says who it is (blue = its number) and whether it was mirrored (red rises with x)."""
    from PIL import Image

    from alexnet_onnx.runtime.errors import UsageError

    w, h = (48, 40) if arch == "alexnet_cifar" else (320, 256)
    xs = np.broadcast_to(np.linspace(0, 255, w), (h, w))
    for i in range(64):
        folder = tmp_path / "train" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        photo = np.stack([xs, np.zeros_like(xs), np.full_like(xs, i * 4)], -1)
        Image.fromarray(photo.round().astype(np.uint8)).save(folder / f"{i}.png")
    spec = ARCHS[arch].preprocess
    mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]

    def mirrored(cache: str, flip: str, epochs: int = 4) -> np.ndarray:
        """(epochs, 64) bool: whether photo i was mirrored in each epoch."""
        cfg = cfg_for(tmp_path, tmp_path / "out", arch=arch, batch_size=16, val_fraction=0.0, cache=cache, workers=0,
                      flip=flip)
        data = Data(load_splits("folder", tmp_path, val_fraction=0.0, limit_train=None, seed=0), cfg,
                    torch.device("cpu"), Dist())
        torch.manual_seed(0)
        out = np.zeros((epochs, 64), dtype=bool)
        seen = np.zeros((epochs, 64), dtype=int)
        for epoch in range(epochs):
            for x, _, *_ in data.train(torch.Generator().manual_seed(epoch), epoch):
                v = (x * std + mean) * 255
                mid = spec.crop // 2
                who = torch.round(v[:, 2, mid, mid] / 4).long().numpy()
                seen[epoch, who] += 1
                out[epoch, who] = (v[:, 0, mid, 0] > v[:, 0, mid, -1]).numpy()
        assert (seen == 1).all(), "every photo once per epoch"
        return out

    store, loader = mirrored("memory", "alternate"), mirrored("none", "alternate")
    assert (store == loader).all(), "the two pipelines mirror different images"
    assert 0.3 < store[0].mean() < 0.7, store[0].mean()
    assert (store[1] == ~store[0]).all() and (store[2] == store[0]).all() and (store[3] == store[1]).all()
    randomly = mirrored("memory", "random")
    assert not (randomly[1] == ~randomly[0]).all(), "random flips do not alternate"
    with pytest.raises(UsageError, match="--flip"):
        cfg_for(tmp_path, tmp_path / "out", flip="sideways")


def test_alternating_flip_changes_only_the_flip():
    """The alternating flip replaces the random one after it is drawn: crops, offsets and Cutout
    squares are what a random-flip run draws; the flip depends on the seed and the key."""
    from PIL import Image

    from alexnet_onnx.train.augment import alternating_flips

    spec = ARCHS["alexnet_cifar"].preprocess
    keys = torch.arange(1000, 1500)
    plain = Augmentation("pad-crop", spec, cutout=8).sample(500, torch.Generator().manual_seed(2))
    alt = Augmentation("pad-crop", spec, cutout=8, flip="alternate", seed=3).sample(500, torch.Generator().manual_seed(2),
                                                                                   keys, 5)
    for name in ("top", "left", "height", "width", "cut"):
        assert torch.equal(getattr(plain, name), getattr(alt, name)), name
    assert torch.equal(alt.flip, alternating_flips(keys, 3, 5)) and torch.equal(alt.flip, ~alternating_flips(keys, 3, 4))
    assert 0.4 < alternating_flips(keys, 4, 0).float().mean() < 0.6
    assert not torch.equal(alternating_flips(keys, 3, 0), alternating_flips(keys, 4, 0)), "the seed picks the flips"
    with pytest.raises(ValueError, match="key"):
        Augmentation("pad-crop", spec, flip="alternate").sample(4)
    with pytest.raises(ValueError, match="key"):
        Augmentation("pad-crop", spec, flip="alternate").image(Image.new("RGB", (32, 32)))


def test_whitening_init_decorrelates_the_first_convs_patches(tiny_folder, tmp_path):
    """--init whiten: on the patches it was computed from, the first conv's responses are
    uncorrelated with variance eigenvalue / (eigenvalue + eps), largest first, each filter
    followed by its negative; the filters past 2 x 27 keep their initialization; a fresh run
    starts (model and EMA) from it; other archs and fine-tuning refuse it."""
    import torch.nn.functional as F

    from alexnet_onnx.runtime.errors import UsageError
    from alexnet_onnx.train.setup import build_run
    from alexnet_onnx.train.models import whiten_first_conv

    torch.manual_seed(0)
    noise = torch.randn(64, 3, 36, 36)
    images = F.avg_pool2d(noise, 5, 1)[:, [0, 1, 2]] + 0.3 * F.avg_pool2d(noise, 5, 1)[:, [1, 2, 0]]  # correlated
    model = build_model("alexnet_cifar", 10, dropout=0.0)
    before = model.features[0].weight.detach().clone()
    assert whiten_first_conv(model, images) == 54
    w = model.features[0].weight.detach().double()
    assert torch.equal(w[54:].float(), before[54:]) and torch.equal(w[1:54:2], -w[0:54:2])
    patches = F.unfold(images, 3).transpose(1, 2).reshape(-1, 27).double()
    cov = torch.cov((patches @ w[0:54:2].reshape(27, 27).T).T)
    eigval = torch.linalg.eigvalsh(torch.cov(patches.T)).flip(0)
    assert torch.allclose(cov, torch.diag(eigval / (eigval + 5e-4)), atol=1e-6)
    assert cov.diagonal()[0] > 0.99

    cfg = cfg_for(tiny_folder, tmp_path, init="whiten", ema=0.9, cache="memory")
    run = build_run(cfg, log=lambda m: None)
    for net in (run.model, run.ema.model):
        w = net.features[0].weight
        assert torch.equal(w[1:54:2], -w[0:54:2])
    plain = build_run(cfg_for(tiny_folder, tmp_path, cache="memory"), log=lambda m: None)
    assert not torch.equal(plain.model.features[0].weight[1], -plain.model.features[0].weight[0])
    for bad in (dict(arch="alexnet"), dict(weights=str(tmp_path / "w.pt"))):
        with pytest.raises(UsageError, match="--init whiten"):
            cfg_for(tiny_folder, tmp_path, init="whiten", **bad)


def test_a_recipe_fills_what_the_command_line_does_not_give(tmp_path, monkeypatch):
    """--recipe cifar10-cpu sets every value of its preset that the user did not give; a flag
    given on the command line wins even when it equals the option's default; --help lists it."""
    from click.testing import CliRunner

    from alexnet_onnx.train import loop
    from alexnet_onnx.train.cli import main as train_main
    from alexnet_onnx.train.config import DEFAULTS, RECIPES

    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, resume=False: seen.append(cfg) or {})
    result = CliRunner().invoke(train_main, ["--recipe", "cifar10-cpu", "--data-dir", str(tmp_path), "--out",
                                             str(tmp_path / "out"), "--batch-size", "64", "--ema", str(DEFAULTS["ema"])])
    assert result.exit_code == 0, result.output
    cfg = seen[0].to_dict()
    preset = RECIPES["cifar10-cpu"]
    assert cfg["batch_size"] == 64 and cfg["ema"] == DEFAULTS["ema"] != preset["ema"]
    assert {k: cfg[k] for k in preset if k not in ("batch_size", "ema")} == {k: v for k, v in preset.items()
                                                                            if k not in ("batch_size", "ema")}
    help_text = CliRunner().invoke(train_main, ["--help"]).output
    assert "cifar10-cpu:" in help_text and "--flip" in help_text


@pytest.mark.parametrize("translate", [0, 2, None])
def test_translate_bounds_the_shift_of_pad_crops(translate):
    from alexnet_onnx.runtime.errors import UsageError

    spec = ARCHS["alexnet_cifar"].preprocess
    aug = Augmentation("pad-crop", spec, translate)
    pad = spec.crop // 8 if translate is None else translate
    crops = aug.sample(4000, torch.Generator().manual_seed(0))
    assert set(crops.top.tolist()) == set(crops.left.tolist()) == set(range(2 * pad + 1))
    x = torch.randint(0, 256, (64, 3, spec.resize, spec.resize), dtype=torch.uint8)
    out = aug.batch(x, torch.Generator().manual_seed(1))
    crop = spec.crop
    for image, source in zip(out, x.float()):  # each crop: the source shifted by at most pad, mirrored or not
        views = (source, source.flip(2))
        if pad == 0:
            assert any(torch.equal(image, v) for v in views), "translate 0 must leave the source or its mirror"
        inner = image[:, pad : crop - pad, pad : crop - pad]
        assert any(torch.equal(inner, v[:, pad + dy : crop - pad + dy, pad + dx : crop - pad + dx])
                   for v in views for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)), "shifted beyond --translate"
    with pytest.raises(UsageError, match="--translate"):
        TrainConfig(dataset="cifar10", data_dir="d", arch="alexnet", epochs=1, translate=2)
    with pytest.raises(UsageError, match="--translate"):
        TrainConfig(dataset="cifar10", data_dir="d", arch="alexnet_cifar", epochs=1, translate=spec.resize)


@pytest.mark.parametrize("arch", ["alexnet_cifar", pytest.param("alexnet", marks=pytest.mark.slow)])
def test_cutout_sets_one_clipped_square_to_the_mean_in_both_pipelines(arch):
    """With the same draws, a Cutout crop differs from the plain one only inside one square of at
    most side x side pixels, which holds the dataset mean; both pipelines cut squares of the same
    size distribution (clipped at the edges when the centre lies near one)."""
    from PIL import Image

    from alexnet_onnx.runtime.errors import UsageError

    spec = ARCHS[arch].preprocess
    side, n = spec.crop // 2, 200
    plain = Augmentation(ARCHS[arch].augment, spec)
    cut = Augmentation(ARCHS[arch].augment, spec, cutout=side)
    mean = torch.tensor(spec.mean)[:, None, None] * 255
    x = torch.randint(0, 256, (n, 3, spec.resize, spec.resize), dtype=torch.uint8)

    def square(a: torch.Tensor, b: torch.Tensor) -> int:
        changed = (a != b).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = (int(v[-1] - v[0] + 1) if len(v) else 0 for v in (rows, cols))
        assert h <= side and w <= side and int(changed.sum()) == h * w, "not one square of at most side x side"
        box = b[:, rows[0] : rows[0] + h, cols[0] : cols[0] + w] if h else b[:, :0]
        assert torch.equal(box, mean.expand_as(box)), "the square does not hold the mean"
        return h * w

    batched = [square(a, b) for a, b in zip(plain.batch(x, torch.Generator().manual_seed(3)),
                                            cut.batch(x, torch.Generator().manual_seed(3)))]
    single = []
    for i, image in enumerate(x[:n]):
        photo = Image.fromarray(image.permute(1, 2, 0).numpy())
        torch.manual_seed(i)
        a = plain.image(photo)
        torch.manual_seed(i)
        single.append(square(a, cut.image(photo)))
    assert max(batched) == side * side and min(batched) < side * side  # full squares and clipped ones
    assert _ks(np.array(batched), np.array(single)) < 0.15, "the pipelines cut differently sized squares"
    with pytest.raises(UsageError, match="--cutout"):
        TrainConfig(dataset="cifar10", data_dir="d", arch=arch, epochs=1, cutout=spec.crop + 1)


def test_precision_is_a_choice_and_bf16_trains(tiny_folder, tmp_path, monkeypatch):
    """--precision bf16 runs the forward pass under bf16 autocast (on any CPU; fast with AMX or
    AVX512_BF16) and trains: finite weights that differ from the fp32 run's; auto follows the
    hardware."""
    from alexnet_onnx.runtime.errors import UsageError
    from alexnet_onnx.train.evaluation import uses_bf16

    with pytest.raises(UsageError, match="--precision"):
        cfg_for(tiny_folder, tmp_path, precision="fp8")
    assert not uses_bf16(torch.device("cpu"), "fp32") and uses_bf16(torch.device("cpu"), "bf16")
    assert uses_bf16(torch.device("cuda"), "auto")
    cpu = torch.device("cpu")
    for amx, avx512_bf16 in ((False, False), (True, False), (False, True)):
        with monkeypatch.context() as m:
            m.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
            m.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
            assert uses_bf16(cpu, "auto") == (amx or avx512_bf16), (amx, avx512_bf16)
            assert not uses_bf16(cpu, "fp32")
    weights = {}
    for precision in ("bf16", "fp32"):
        lines: list[str] = []
        cfg = cfg_for(tiny_folder, tmp_path / precision, epochs=1, limit_train=16, precision=precision)
        train(cfg, log=lines.append)
        assert any(f"{precision} training" in line for line in lines)
        weights[precision] = torch.load(tmp_path / precision / "last.pt", weights_only=True)["model"]
    w16, w32 = weights["bf16"]["features.0.weight"], weights["fp32"]["features.0.weight"]
    assert torch.isfinite(w16).all() and not torch.equal(w16, w32)


def test_validation_follows_the_training_precision_on_cuda_and_is_fp32_on_cpu(tiny_folder, tmp_path, monkeypatch):
    """--precision fp32 on CUDA validates in fp32 too; bf16 and auto there validate in bf16; on
    CPU validation is fp32 whatever the training precision. A bf16 run on CPU shows what the
    training steps and the validation pass each ask autocast for."""
    from alexnet_onnx.train.evaluation import validation_bf16

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not validation_bf16(cuda, "fp32") and validation_bf16(cuda, "bf16") and validation_bf16(cuda, "auto")
    assert not any(validation_bf16(cpu, precision) for precision in ("fp32", "bf16", "auto"))

    asked, real = [], torch.autocast

    def recording(device_type, dtype=None, enabled=True, **kwargs):
        asked.append(("validation" if not torch.is_grad_enabled() else "training", device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording)
    train(cfg_for(tiny_folder, tmp_path / "run", epochs=1, limit_train=16, precision="bf16"), log=lambda m: None)
    assert {a for a in asked if a[0] == "training"} == {("training", "cpu", torch.bfloat16, True)}
    assert {a for a in asked if a[0] == "validation"} == {("validation", "cpu", torch.bfloat16, False)}
