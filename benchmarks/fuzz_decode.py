"""Long-running fuzzing of the decode + preprocess path (the same properties as the quick
hypothesis tests in make test, with many more examples):

    python benchmarks/fuzz_decode.py [--examples 20000]

Property: any bytes, and any truncation or bit-flip of a real encoded image, either become a
finite (3, 32, 32) float32 array or raise ImageError with a one-line message — never another
exception, never a hang — on the exact path and on the fast path's reduced JPEG decode. Prints
the case counts, the slowest case and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzzing import check_decodes as check  # noqa: E402  the property, defined once

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=20000)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
