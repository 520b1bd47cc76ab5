"""Shared fixtures: small generated datasets, a tiny trained checkpoint and its ONNX export."""

from __future__ import annotations

import json
import os
import pickle
import socket as socket_module
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fuzzing import proto  # noqa: F401  (one protobuf encoder for the tests)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "flowers" / "train").is_dir(), reason=f"real photos not present at {SHARED_DATA}"
)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def sigint_as_ctrl_c() -> None:
    """A Popen preexec_fn: SIGINT back to its default in the child, so the child's Python turns it
    into KeyboardInterrupt as under a terminal's Ctrl-C. A shell starts background jobs with SIGINT
    ignored (`make test &`), the child inherits that and Python keeps it ignored: a test that sends
    SIGINT would then see the run finish instead."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_image(label: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A noisy image whose colour depends on the label, so a few steps of training learn it."""
    w, h = size
    base = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (255 - label * 71) % 256], dtype=np.float64)
    pixels = base + rng.normal(0, 30, size=(h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_image_folder(root: Path, classes: list[str], per_class: int, size=(40, 36), seed=0, suffix=".png") -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(label, size, rng).save(root / name / f"{i:03d}{suffix}")
    return root


def write_cifar_pickles(folder: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> Path:
    """A tiny cifar-10-batches-py in the real format (protocol-2 pickles of numpy arrays)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int) -> dict:
        labels = [i % 10 for i in range(n)]
        data = np.stack([np.asarray(make_image(k, (32, 32), rng)).transpose(2, 0, 1).reshape(-1) for k in labels])
        return {b"batch_label": b"tiny", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}

    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}, f, protocol=2)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test), f, protocol=2)
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """ImageFolder with train/ and test/, three classes."""
    root = tmp_path_factory.mktemp("tiny_folder")
    make_image_folder(root / "train", ["cat", "dog", "owl"], per_class=16, seed=1)
    make_image_folder(root / "test", ["cat", "dog", "owl"], per_class=4, seed=2)
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_folder, tmp_path_factory) -> Path:
    """train-alexnet on the tiny folder: 2 epochs of alexnet_cifar; returns its --out dir."""
    from alexnet_onnx.train.config import TrainConfig
    from alexnet_onnx.train.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(dataset="folder", data_dir=str(tiny_folder), arch="alexnet_cifar", epochs=2,
                      batch_size=16, lr=0.02, out=str(out), val_fraction=0.25, seed=0)
    train(cfg, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def exported_model(trained_run) -> Path:
    from alexnet_onnx.export.pipeline import export_checkpoint

    path = trained_run / "model.onnx"
    if not path.exists():
        export_checkpoint(trained_run / "best.pt", path, log=lambda m: None)
    return path


@pytest.fixture()
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never reach the internet; code that tries gets the same error as an offline machine."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    os.environ.setdefault("NO_PROXY", "*")


class Boom:
    """Unpickling this runs a shell command; a safe loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoint(kind: str, tmp_path: Path, trained_run: Path) -> Path:
    """A hostile or wrong variant of the tiny run's best.pt."""
    import torch

    path = tmp_path / "bad.pt"
    good = trained_run / "best.pt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "random":
        path.write_bytes(os.urandom(3000))
    elif kind == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    elif kind == "state-dict-only":
        torch.save(torch.load(good, weights_only=True)["model"], path)
    elif kind == "nan":
        ckpt = torch.load(good, weights_only=True)
        ckpt["model"]["features.0.weight"][0, 0, 0, 0] = float("nan")
        torch.save(ckpt, path)
    elif kind == "classes":
        ckpt = torch.load(good, weights_only=True)
        ckpt["contract"]["labels"] = json.dumps(["a", "b", "c", "d"])
        torch.save(ckpt, path)
    elif kind == "malicious":
        torch.save({"model": Boom(tmp_path / "pwned")}, path, pickle_module=pickle)
    return path


# Images of every Pillow mode, and the suffix each is saved with when not .png.
def rgba_image() -> Image.Image:
    im = Image.new("RGBA", (6, 4), (10, 200, 30, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    im.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black -> mid grey
    return im


MODES = {
    "1": lambda: Image.new("1", (5, 3), 1),
    "L": lambda: Image.new("L", (5, 3), 77),
    "P": lambda: Image.new("RGB", (5, 3), (200, 10, 10)).convert("P"),
    "RGB": lambda: Image.new("RGB", (5, 3), (1, 2, 3)),
    "RGBA": rgba_image,
    "LA": lambda: Image.new("LA", (5, 3), (90, 0)),
    "PA": lambda: Image.new("PA", (5, 3), (3, 0)),
    "CMYK": lambda: Image.new("CMYK", (5, 3), (0, 255, 255, 0)),
    "YCbCr": lambda: Image.new("YCbCr", (5, 3), (128, 128, 128)),
    "I;16": lambda: Image.fromarray(np.full((3, 5), 32896, np.uint16)),
    "I": lambda: Image.new("I", (5, 3), 1000),
    "F": lambda: Image.fromarray(np.full((3, 5), 0.5, np.float32)),
}
SAVE_AS = {"CMYK": ".jpg", "YCbCr": ".jpg", "F": ".tiff", "I": ".tiff", "PA": ".png", "LA": ".png"}


def png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


_REAL_CONNECT = socket_module.socket.connect
_REAL_GETADDRINFO = socket_module.getaddrinfo
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@pytest.fixture()
def loopback_only(_no_network, monkeypatch):
    """Connections to this machine's loopback address only (a test's own server); the internet
    stays as unreachable as `_no_network` makes it."""

    def connect(sock, address):
        if address[0] not in LOOPBACK_HOSTS:
            raise OSError("network disabled in tests")
        return _REAL_CONNECT(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK_HOSTS:
            raise OSError("network disabled in tests")
        return _REAL_GETADDRINFO(host, *args, **kwargs)

    monkeypatch.setattr(socket_module.socket, "connect", connect)
    monkeypatch.setattr(socket_module, "getaddrinfo", getaddrinfo)
