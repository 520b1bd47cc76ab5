"""Peak memory of onnx-predict on the deepest images the policy allows: 89-Mpixel (just under the
pixel limit) 16-bit grey PNGs, and 32-bit integer and float TIFFs, one file and a folder of six.

    python benchmarks/deep_images.py --model model.onnx [--kinds png16,tiff32,tiff_float] [--count 6]

The files compress to a few hundred KB each (smooth gradients), so they are cheap on disk and
expensive only once decoded — what an attacker or a scientific camera hands over.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstats import run_measured  # noqa: E402

WIDTH, HEIGHT = 8900, 10000  # 89.0 Mpixel, under runtime.image.MAX_PIXELS


def make(kind: str, path: Path) -> Path:
    # Smooth, in blocks of 100x100 equal values: long runs that deflate squeezes to almost nothing.
    coarse = np.linspace(0, 1, WIDTH // 100, dtype=np.float32)[None, :] * np.linspace(0.2, 1, HEIGHT // 100, dtype=np.float32)[:, None]
    ramp = np.repeat(np.repeat(coarse, 100, axis=0), 100, axis=1)
    if kind == "png16":
        Image.fromarray((ramp * 65535).astype(np.uint16)).save(path := path.with_suffix(".png"), compress_level=1)
    elif kind == "tiff32":
        Image.fromarray((ramp.astype(np.float64) * (2**31 - 1)).astype(np.int32)).save(path := path.with_suffix(".tif"), compression="tiff_adobe_deflate")
    elif kind == "tiff_float":
        Image.fromarray(ramp).save(path := path.with_suffix(".tif"), compression="tiff_adobe_deflate")
    else:
        raise ValueError(kind)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--kinds", default="png16,tiff32,tiff_float")
    ap.add_argument("--count", type=int, default=6)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deep-images-"))
    print(f"{WIDTH}x{HEIGHT} images, model {args.model.name}")
    print(f"{'kind':<12}{'file KB':>9}{'one: s':>9}{'one: peak MiB':>15}{f'{args.count}: s':>8}"
          f"{f'{args.count}: peak MiB':>14}")
    for kind in args.kinds.split(","):
        folder = work / kind
        folder.mkdir()
        first = make(kind, folder / "0")
        for i in range(1, args.count):
            (folder / f"{i}{first.suffix}").write_bytes(first.read_bytes())
        cmd = [sys.executable, "-m", "alexnet_onnx.runtime.cli", "-m", str(args.model)]
        one = run_measured([*cmd, str(first)], timeout=600)
        many = run_measured([*cmd, str(folder)], timeout=1200)
        if one[0] != 0 or many[0] != 0:
            sys.exit(f"{kind}: onnx-predict exited {one[0]} / {many[0]}")
        print(f"{kind:<12}{first.stat().st_size // 1024:>9}{one[1]:>9.1f}{one[2]:>15.0f}{many[1]:>8.1f}{many[2]:>14.0f}")


if __name__ == "__main__":
    main()
