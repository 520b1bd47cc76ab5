"""Make the CIFAR-10 test split available as image files for onnx-predict (used by `make demo`).

An ImageFolder copy (DIR/test) is used as it is; the python-pickle format is written out as
lossless PNGs in OUT/<class>/. Writes OUT/root.txt (the ImageFolder to --eval) and
OUT/samples.txt (one image of each of the first five classes).
"""

from __future__ import annotations

from pathlib import Path

import click

from alexnet_onnx.runtime.atomic import atomic_write

from .sources import find_cifar10


@click.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
def main(data_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if (data_dir / "test").is_dir():
        root = data_dir / "test"
    else:
        _, test = find_cifar10(data_dir)
        root = out
        counters = [0] * len(test.classes)
        for i, label in enumerate(test.labels):
            target = out / test.classes[label] / f"{counters[label]:04d}.png"
            counters[label] += 1
            if not target.exists():  # written atomically: a run killed mid-write leaves no torn PNG
                atomic_write(target, lambda f, image=test.image(i): image.save(f, format="PNG"))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = [min(p for p in (root / c).iterdir() if not p.name.startswith(".")) for c in classes[:5]]
    atomic_write(out / "root.txt", lambda f: f.write(f"{root}\n".encode()))
    atomic_write(out / "samples.txt", lambda f: f.write("".join(f"{p}\n" for p in samples).encode()))


if __name__ == "__main__":
    main()
