"""onnx-predict --ray local vs plain onnx-predict on the same photos, in one run, and the driver's
own rates (files listed per second, rows written per second), from which docs/cluster.md works out
the cluster size at which the driver becomes the limit.

    python benchmarks/cluster_throughput.py --model m.onnx --dir ../shared/data/flowers/train \
        --limit 1800 [--list-dir ../shared/data/cifar10]

Ray's fixed start-up (ray.init, the pipeline and its first actor) is measured apart, as the time
of a one-photo run, and taken off the --ray run's time for the per-photo rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
EXE = str(Path(sys.executable).parent / "onnx-predict")


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"onnx-predict {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=1800)
    ap.add_argument("--list-dir", type=Path, help="a big folder to time the driver's listing on")
    args = ap.parse_args()
    files = sorted(p for p in args.dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "imgs")
        folder.mkdir()
        for i, f in enumerate(files):
            os.symlink(f.resolve(), folder / f"{i:06d}{f.suffix}")
        one = Path(tmp, "one")
        one.mkdir()
        os.symlink(files[0].resolve(), one / f"0{files[0].suffix}")
        model = str(args.model)
        plain, _ = timed(["-m", model, "--format", "json", str(folder)])
        fixed, _ = timed(["-m", model, "--ray", "local", str(one), "--output", str(Path(tmp, "one.jsonl"))])
        total, proc = timed(["-m", model, "--ray", "local", str(folder), "--output", str(Path(tmp, "all.jsonl"))])
        summary = proc.stderr.strip().splitlines()[-1]
        rows = len(Path(tmp, "all.jsonl").read_text().splitlines())
    ray_rate = len(files) / max(total - fixed, 1e-9)
    plain_rate = len(files) / plain
    print(f"{len(files)} photos from {args.dir}, {len(os.sched_getaffinity(0))} cores, model {args.model.name}")
    print(f"plain onnx-predict: {plain:.2f} s, {plain_rate:.1f} img/s")
    print(f"--ray local: {total:.2f} s in all; fixed start-up (a one-photo run) {fixed:.2f} s; "
          f"{ray_rate:.1f} img/s after it; {ray_rate / plain_rate:.2f}x plain ({rows} rows)")
    print(f"  its summary: {summary}")
    driver_rates(args.list_dir or args.dir)


def driver_rates(list_dir: Path) -> None:
    """The driver's serial work per row: listing inputs and writing rows (parts, then the merge)."""
    from alexnet_onnx.runtime.cluster_settings import RunSettings
    from alexnet_onnx.runtime.cluster_sources import list_sources
    from alexnet_onnx.runtime.cluster_store import RowStore

    start = time.perf_counter()
    sources, _ = list_sources([str(list_dir)], lambda n: None)
    listed = len(sources) / (time.perf_counter() - start)
    line = json.dumps({"path": "/data/photos/000000.jpg", "label": "dandelion", "score": 0.5,
                       "top_k": [{"label": "dandelion", "score": 0.5}]})
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".jsonl", ".parquet"):
            out = RowStore(Path(tmp, f"rows{suffix}"))
            out.open(RunSettings("0" * 64, 1, "exact"), overwrite=False)
            n = 200_000
            start = time.perf_counter()
            for i in range(0, n, 20_000):
                out.write_part([line.replace("000000", f"{j:06d}") for j in range(i, i + 20_000)])
            out.finish()
            rates[suffix] = n / (time.perf_counter() - start)
    print(f"driver: {len(sources)} files listed from {list_dir} at {listed:,.0f} files/s; rows written "
          + ", ".join(f"{s} {r:,.0f} rows/s" for s, r in rates.items()))


if __name__ == "__main__":
    main()
