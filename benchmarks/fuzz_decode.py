"""Long-running fuzzing of the decode + preprocess path (the same properties as the quick
hypothesis tests in make test, with many more examples):

    python benchmarks/fuzz_decode.py [--examples 20000] [--bomb-seconds 60]

Property: any bytes, and any truncation or bit-flip of a real encoded image, either become a
finite (3, 32, 32) float32 array or raise ImageError with a one-line message — never another
exception, never a hang — on the exact path and on the fast path's reduced JPEG decode. Prints
the case counts, the slowest case and the process's peak RSS.

Then the decoding-time and memory bombs (tests/image_bombs.py) at attacker sizes, one class at a
time for --bomb-seconds each: random scan counts and sides, strip counts, tile sides, text and
private PNG chunks up to 1.5 GB, written here and checked in a fresh process, so its peak memory
(VmHWM) is that class's alone. Prints per class the cases, outcomes, worst time and peak memory.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import image_bombs  # noqa: E402
from fuzzing import check_decodes as check  # noqa: E402  the property, defined once

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]


BOMBS = {  # class: rng -> (file name, writer)
    "jpeg-scans": lambda r: ("b.jpg", lambda p: image_bombs.jpeg_scans(p, int(r.integers(50, 30000)),
                                                                       side=int(r.integers(64, 8192)))),
    "tiff-strips": lambda r: ("b.tif", lambda p: image_bombs.tiff_strips(
        p, int(r.integers(2, 9_000_000)), height=int(r.choice([1, r.integers(1, 9_000_000)])))),
    "tiff-tile": lambda r: ("b.tif", lambda p: image_bombs.tiff_tile(p, tile=16 * int(r.integers(1, 4096)))),
    "png-text": lambda r: ("b.png", lambda p: image_bombs.png_chunk(p, b"tEXt", int(r.integers(1 << 20, 1500 << 20)))),
    "png-private": lambda r: ("b.png", lambda p: image_bombs.png_chunk(p, b"prIv", int(r.integers(1 << 20, 1500 << 20)))),
}
CHECK_ONE = """
import json, sys, time
from alexnet_onnx.runtime.errors import ImageError
from alexnet_onnx.runtime.image import load_image
start, outcome = time.perf_counter(), "decoded"
try:
    load_image(sys.argv[1])
except ImageError as exc:
    assert "\\n" not in str(exc)
    outcome = "refused"
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome, "peak_mib": hwm / 1024}))
"""


def bombs(seconds: float) -> None:
    """Each bomb class for `seconds`: a fresh file and a fresh checking process per case."""
    work = Path(tempfile.mkdtemp())
    print(f"{'class':<13}{'cases':>6}  {'outcomes':<22}{'worst s':>8}{'peak MiB':>10}")
    for name, make in BOMBS.items():
        rng, cases, outcomes, worst, peak = np.random.default_rng(0), 0, {}, 0.0, 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            file_name, write = make(rng)
            path = write(work / file_name)
            proc = subprocess.run([sys.executable, "-c", CHECK_ONE, str(path)], capture_output=True, text=True,
                                  timeout=600)
            path.unlink()
            if proc.returncode != 0:
                sys.exit(f"{name}: the check failed:\n{proc.stderr}")
            got = json.loads(proc.stdout)
            cases += 1
            outcomes[got["outcome"]] = outcomes.get(got["outcome"], 0) + 1
            worst, peak = max(worst, got["seconds"]), max(peak, got["peak_mib"])
        summary = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
        print(f"{name:<13}{cases:>6}  {summary:<22}{worst:>8.3f}{peak:>10.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--bomb-seconds", type=float, default=60.0, help="Seconds per bomb class (0: none).")
    args = ap.parse_args()
    if args.examples == 0:
        bombs(args.bomb_seconds)
        return
    path = Path(tempfile.mkdtemp()) / "fuzz.img"
    worst = {"mutated": 0.0, "raw": 0.0}

    def timed(kind: str, data: bytes) -> None:
        start = time.perf_counter()
        check(path, data)
        worst[kind] = max(worst[kind], time.perf_counter() - start)

    @settings(max_examples=args.examples, deadline=None, database=None)
    @given(fmt=st.sampled_from(FORMATS), w=st.integers(1, 64), h=st.integers(1, 64), seed=st.integers(0, 2**32 - 1),
           cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8))
    def mutated(fmt, w, h, seed, cut, flips):
        pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        data = bytearray(buffer.getvalue()[: max(1, int(len(buffer.getvalue()) * max(cut, 0.02)))])
        for where, value in flips:
            data[int(where * (len(data) - 1))] = value
        timed("mutated", bytes(data))

    @settings(max_examples=args.examples, deadline=None, database=None)
    @given(data=st.binary(max_size=4096))
    def raw(data):
        timed("raw", data)

    mutated()
    raw()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ok: {args.examples} mutated images (slowest {1000 * worst['mutated']:.1f} ms) and {args.examples} random "
          f"byte strings (slowest {1000 * worst['raw']:.1f} ms), each through the exact and the fast path; "
          f"peak RSS {peak_mib:.0f} MiB")
    if args.bomb_seconds:
        bombs(args.bomb_seconds)


if __name__ == "__main__":
    main()
