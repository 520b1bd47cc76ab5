"""Would a cheaper reduction pay for camera-size photos that are not JPEG? JPEG has a reduced
decode (DCT scaling: --decode fast); other formats must be decoded in full, and the only lever
left is the resize. Pillow's `reducing_gap` first shrinks by an integer factor with a box filter,
then resamples the rest: cheaper, but different pixels. This prints, per format, the per-photo
milliseconds of decoding, of the exact resize + crop, and of the resize with reducing_gap, and
what share of the whole the reduction would save.

    python benchmarks/reducing_gap.py --src artifacts/camera/12mp [--photos 8] [--gap 2 --gap 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from alexnet_onnx.runtime.preprocess import crop_box, resized_size

FORMATS = {"png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}


def ms(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="folder of camera-size JPEGs (benchmarks/camera_photos.py)")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--gap", type=float, action="append", help="reducing_gap values [default: 2, 3]")
    ap.add_argument("--resize", type=int, default=256, help="the contract's resize (crop 224)")
    args = ap.parse_args()
    gaps = args.gap or [2.0, 3.0]
    sources = sorted(args.src.rglob("*.jpg"))[: args.photos]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{len(sources)} photos from {args.src}, one thread, best of 3; milliseconds per photo")
        print(f"{'format':<6} {'decode':>8} {'resize':>8} " + " ".join(f"{'gap ' + str(g):>8}" for g in gaps)
              + "  saved of decode+resize")
        for ext, fmt in FORMATS.items():
            decode, exact, reduced = [], [], {g: [] for g in gaps}
            for i, src in enumerate(sources):
                path = Path(tmp, f"{i}.{ext}")
                with Image.open(src) as im:
                    im.convert("RGB").save(path, fmt)

                def load() -> Image.Image:
                    with Image.open(path) as im:
                        return im.convert("RGB")

                decode.append(ms(load))
                im = load()
                size = resized_size(*im.size, args.resize)
                box = crop_box(*size, 224)
                exact.append(ms(lambda: im.resize(size, Image.Resampling.BILINEAR).crop(box)))
                for g in gaps:
                    reduced[g].append(ms(lambda: im.resize(size, Image.Resampling.BILINEAR, reducing_gap=g).crop(box)))
            d, e = statistics.median(decode), statistics.median(exact)
            r = {g: statistics.median(v) for g, v in reduced.items()}
            saved = ", ".join(f"{100 * (e - v) / (d + e):.0f}%" for v in r.values())
            print(f"{ext:<6} {d:>8.1f} {e:>8.1f} " + " ".join(f"{v:>8.1f}" for v in r.values()) + f"  {saved}")


if __name__ == "__main__":
    main()
