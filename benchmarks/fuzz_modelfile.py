"""Long-running fuzzing of model files (the same property and mutations as the quick hypothesis
test in make test, tests/test_hostile_models.py, with many more cases):

    python benchmarks/fuzz_modelfile.py --model model.onnx --image cat.jpg [--cases 3000] [--cli-every 20]
        [--attack-seconds 600] [--classes op-swap,int-div,...]

Each case is a structured mutation of a real exported model (truncation, field 0, runs of zeros,
huge lengths, deep nesting, duplicated graph or metadata, huge unknown fields, byte flips,
splices). In process, the checks that run before onnxruntime must accept it or refuse it with a
one-line ModelError within a memory bound; every `--cli-every`-th case, and a few fixed large
attacks, also run through `onnx-predict` in a fresh process, which must exit 0, 1 or 3 within
--max-seconds and --max-mib (peak RSS). Prints the worst time and memory per mutation kind.

Then, for --attack-seconds in all, the hostile-model classes of benchmarks/model_attacks.py
(operator swaps and insertions, model-local functions, integer division, outer products from
allowed operators, huge strings, contract sizes) and `truncate-live` (the model truncated while
onnx-predict runs on a copy of it), round-robin, each case built at random attacker sizes and run
through `onnx-predict` in a fresh process under an address-space cap (--cap-gib) and a timeout.
Outcomes: refused (exit 3, one line), ran (exit 0/1 with rows), crash (a signal), hang (the
timeout), other. Any crash, hang or other is a finding, saved under --findings with its recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fuzzing import MUTATIONS, check_model_file, mutate, proto  # noqa: E402
from procstats import run_measured  # noqa: E402
from hostile_runs import attack_rounds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="an exported .onnx to mutate")
    ap.add_argument("--image", type=Path, required=True, help="an image for the onnx-predict runs")
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--cli-every", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=5.0)
    ap.add_argument("--max-mib", type=float, default=500.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attack-seconds", type=float, default=600.0, help="time for the hostile-model classes")
    ap.add_argument("--classes", default="", help="comma-separated classes to run (default: all)")
    ap.add_argument("--cap-gib", type=float, default=3.0, help="address-space cap of each onnx-predict run")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a run counts as a hang")
    ap.add_argument("--findings", type=Path, default=ROOT / "artifacts" / "fuzz-findings")
    args = ap.parse_args()
    model = args.model.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="fuzz-modelfile-"))
    path = work / "case.onnx"
    rng = np.random.default_rng(args.seed)
    walk = defaultdict(lambda: [0, 0.0, 0])  # kind -> cases, worst seconds, worst peak bytes
    cli = defaultdict(lambda: [0, 0.0, 0.0, set()])  # kind -> runs, worst seconds, worst MiB, exit codes
    failures = []

    def through_cli(kind: str) -> None:
        cmd = [sys.executable, "-m", "alexnet_onnx.runtime.cli", "-m", str(path), str(args.image)]
        code, seconds, mib = run_measured(cmd, args.max_seconds * 4)
        entry = cli[kind]
        entry[0] += 1
        entry[1], entry[2] = max(entry[1], seconds), max(entry[2], mib)
        entry[3].add(code)
        if code not in (0, 1, 3) or seconds > args.max_seconds or mib > args.max_mib:
            failures.append(f"{kind}: exit {code}, {seconds:.2f} s, {mib:.0f} MiB (kept as {work / kind}.onnx)")
            path.replace(work / f"{kind}.onnx")

    for case in range(args.cases):
        kind = MUTATIONS[case % len(MUTATIONS)]
        data = mutate(model, kind, rng)
        start = time.perf_counter()
        peak = check_model_file(path, data)  # asserts the property and the memory bound
        seconds = time.perf_counter() - start
        entry = walk[kind]
        entry[0] += 1
        entry[1], entry[2] = max(entry[1], seconds), max(entry[2], peak)
        if case // len(MUTATIONS) % args.cli_every == 0:  # every kind, every cli_every-th round
            through_cli(kind)

    fixed = {
        "zeros-200MB": b"\x00" * (200 << 20),
        "unknown-field-200MB": model + proto(99, b"\x01" * (200 << 20)),
        "length-4GB": model + b"\x3a\xff\xff\xff\xff\x0f",
        "fields-2M": b"\x08\x01" * 2_000_000,
    }
    for name, data in fixed.items():
        path.write_bytes(data)
        through_cli(name)
    fifo = work / "fifo.onnx"
    os.mkfifo(fifo)
    path = fifo
    through_cli("fifo")

    print(f"{'mutation':<22}{'cases':>7}{'walk worst ms':>15}{'walk peak KiB':>15}"
          f"{'cli runs':>10}{'cli worst s':>13}{'cli peak MiB':>14}  exit codes")
    for kind in [*MUTATIONS, *fixed, "fifo"]:
        w, c = walk.get(kind, [0, 0.0, 0]), cli.get(kind, [0, 0.0, 0.0, set()])
        print(f"{kind:<22}{w[0]:>7}{w[1] * 1000:>15.1f}{w[2] / 1024:>15.0f}{c[0]:>10}{c[1]:>13.2f}{c[2]:>14.0f}  "
              f"{','.join(map(str, sorted(c[3])))}")
    findings = attack_rounds(args, work) if args.attack_seconds > 0 else 0
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
    if failures or findings:
        sys.exit(1)
    print(f"ok: {args.cases} mutated models, {sum(c[0] for c in cli.values())} onnx-predict runs")


if __name__ == "__main__":
    main()
