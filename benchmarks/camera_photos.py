"""Make camera-size JPEG sets from real photos (none ship here): what phones and cameras write.

    python benchmarks/camera_photos.py --src ../shared/data/flowers/train --out artifacts/camera [--per-class 6]

Writes OUT/12mp/<class>/*.jpg (4032x3024, 4:3) and OUT/2mp/<class>/*.jpg (1920x1080, 16:9), an
ImageFolder each, so `onnx-predict --eval` works on them too. Each photo is a real photo cropped to
the aspect ratio, upscaled (bicubic), given sensor-like noise (Gaussian, sigma 3 grey levels, per
channel) and saved at JPEG quality 90 with 4:2:0 chroma, as cameras do. Every third photo is
progressive; every fourth is stored on its side with EXIF orientation 6 or 8 (the upright view is
the original), as a phone held sideways writes it. Seeded: the same sources give the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SETS = {"12mp": (4032, 3024), "2mp": (1920, 1080)}
NOISE_SIGMA = 3.0
QUALITY = 90


def camera_photo(src: Path, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    with Image.open(src) as im:
        im = im.convert("RGB")
    w, h = im.size
    target = size[0] / size[1]
    if w / h > target:  # crop to the set's aspect ratio, centred
        cw = round(h * target)
        im = im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    else:
        ch = round(w / target)
        im = im.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
    big = np.asarray(im.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    big += rng.normal(0.0, NOISE_SIGMA, big.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(big), 0, 255).astype(np.uint8), "RGB")


def save(photo: Image.Image, path: Path, index: int) -> None:
    options = {"quality": QUALITY, "subsampling": "4:2:0", "progressive": index % 3 == 2}
    if index % 4 == 3:  # on its side: the pixels rotated, EXIF says how to turn them back
        orientation = 6 if index % 8 == 3 else 8
        exif = Image.Exif()
        exif[0x0112] = orientation
        # orientation 6: view = stored rotated 270 (clockwise 90) -> store the view rotated 90
        photo = photo.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
        options["exif"] = exif.tobytes()
    photo.save(path, "JPEG", **options)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="an ImageFolder of real photos")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=6, help="photos per class and set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    classes = sorted(d for d in args.src.iterdir() if d.is_dir() and not d.name.startswith("."))
    for name, size in SETS.items():
        count = 0
        for folder in classes:
            sources = sorted(folder.glob("*.jpg"))
            picks = rng.choice(len(sources), size=min(args.per_class, len(sources)), replace=False)
            out = args.out / name / folder.name
            out.mkdir(parents=True, exist_ok=True)
            for index, pick in enumerate(sorted(picks)):
                path = out / f"{sources[pick].stem}.jpg"
                save(camera_photo(sources[pick], size, rng), path, index)
                count += 1
        print(f"{args.out / name}: {count} photos, {size[0]}x{size[1]}")


if __name__ == "__main__":
    main()
