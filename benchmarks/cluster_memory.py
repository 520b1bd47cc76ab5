"""Peak memory of the `onnx-predict --ray` driver on a rerun against a large OUT, without Ray:
the driver's own work before and after the cluster's (which paths OUT already holds, the merge of
this run's part into OUT, the scan for error rows), on a synthetic OUT made with pyarrow.

    python benchmarks/cluster_memory.py --rows 10000000 --sources 10000 [--format parquet|jsonl]

OUT holds `--rows` rows; this run names `--sources` paths, half of them already in OUT. Each
measurement runs in a fresh process and reports that process's peak RSS (VmHWM, which exec
resets) after each step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alexnet_onnx.runtime.cluster_settings import RunSettings

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CHUNK = 1_000_000  # rows generated per row group / write
ERROR_EVERY = 1000  # one error row in this many
SETTINGS = RunSettings("0" * 64, 1, "exact", "synthetic.onnx")


def path_of(i: int) -> str:
    return f"/archive/photos/{i // 1000:05d}/{i:08d}.jpg"


def make_out(out: Path, rows: int) -> None:
    """A synthetic OUT of `rows` rows, written a chunk at a time, that records SETTINGS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alexnet_onnx.runtime.cluster_store import SETTINGS_KEY, SIDECAR_SUFFIX, parquet_schema

    schema = parquet_schema().with_metadata({SETTINGS_KEY: SETTINGS.to_json().encode()})
    writer = pq.ParquetWriter(out, schema) if out.suffix == ".parquet" else None
    if writer is None:
        out.with_name(out.name + SIDECAR_SUFFIX).write_text(SETTINGS.to_json())
    with (open(out, "w", encoding="utf-8") if writer is None else writer) as sink:
        for start in range(0, rows, CHUNK):
            batch = []
            for i in range(start, min(rows, start + CHUNK)):
                if i % ERROR_EVERY == 0:
                    batch.append({"path": path_of(i), "error": f"{path_of(i)}: not an image"})
                else:
                    label = LABELS[i % len(LABELS)]
                    batch.append({"path": path_of(i), "label": label, "score": 0.5,
                                  "top_k": [{"label": label, "score": 0.5}]})
            if writer is None:
                sink.writelines(json.dumps(row) + "\n" for row in batch)
            else:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resume(out: Path, rows: int, sources: int) -> None:
    """The driver's steps of a rerun naming `sources` paths (half in OUT, half new)."""
    from alexnet_onnx.runtime.cluster_sources import Source
    from alexnet_onnx.runtime.cluster_store import RowStore

    named = [Source(path_of(rows - sources // 2 + i), path_of(rows - sources // 2 + i)) for i in range(sources)]
    report = {"imports": peak_mib()}
    start = time.perf_counter()
    seconds = {}
    store = RowStore(out)
    store.open(SETTINGS, overwrite=False)
    done = store.done(s.path for s in named)
    todo = [s.path for s in named if s.path not in done]
    report["done check"], seconds["done check"] = peak_mib(), time.perf_counter() - start
    store.write_part([json.dumps({"path": p, "label": "cat", "score": 0.5, "top_k": [{"label": "cat", "score": 0.5}]})
                      for p in todo])
    store.finish()
    report["merge"], seconds["merge"] = peak_mib(), time.perf_counter() - start - sum(seconds.values())
    failed = sum("error" in row for row in store.rows({s.path for s in named}))
    report["error scan"], seconds["error scan"] = peak_mib(), time.perf_counter() - start - sum(seconds.values())
    report["seconds"] = time.perf_counter() - start
    report["todo"], report["failed"], report["step seconds"] = len(todo), failed, seconds
    print(json.dumps(report))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--sources", type=int, default=10_000)
    ap.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    ap.add_argument("--phase", choices=["make", "resume"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "make":
        make_out(args.out, args.rows)
        return
    if args.phase == "resume":
        resume(args.out, args.rows, args.sources)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, f"out.{args.format}")
        common = [sys.executable, __file__, "--rows", str(args.rows), "--sources", str(args.sources), "--out", str(out)]
        start = time.perf_counter()
        subprocess.run([*common, "--phase", "make"], check=True)
        print(f"OUT: {args.rows:,} rows, {out.stat().st_size / 2**20:.0f} MiB {args.format}, "
              f"made in {time.perf_counter() - start:.0f} s", flush=True)
        proc = subprocess.run([*common, "--phase", "resume"], check=True, capture_output=True, text=True)
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"this run: {args.sources:,} paths, {report['todo']:,} not yet in OUT; {report['seconds']:.0f} s")
    for step in ("imports", "done check", "merge", "error scan"):
        took = report["step seconds"].get(step)
        print(f"  peak RSS after {step:<10} {report[step]:8.0f} MiB" + (f"  ({took:.1f} s)" if took is not None else ""))


if __name__ == "__main__":
    main()
