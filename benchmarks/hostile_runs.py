"""Runs the hostile-model classes (model_attacks.py, plus a model truncated mid-run) through
onnx-predict, one fresh capped process per case, and prints per class: cases, outcomes, worst
time, peak memory. Used by fuzz_modelfile.py."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from alexnet_onnx.runtime.progress import Progress
from model_attacks import CLASSES

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
KEEP_FILE_BYTES = 64 << 20  # findings larger than this keep their recipe only (it rebuilds them)
LIVE_IMAGES = 64  # copies of the image a truncate-live run classifies, so the run outlasts the truncation
MAX_ERROR_LINE = 64 << 10  # a refusal is one line; one longer than this is reported, not counted refused
LIVE_MAX_DELAY = 3.0  # seconds after the start at which truncate-live truncates


@dataclass(frozen=True)
class Outcome:
    kind: str  # refused, ran, crash, hang, other
    code: int
    seconds: float
    peak_mib: float
    first_line: str
    stdout_bytes: int
    stderr_bytes: int


def run_capped(cmd: list[str], cap_bytes: int, timeout: float, during=None) -> Outcome:
    """`cmd` in a fresh process under RLIMIT_AS; peak RSS from the child's own wait4 rusage
    (measured through GNU time, so this process's size is never inherited into the figure)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    # Output goes to files, not pipes: a run that prints gigabytes must not take this process's memory.
    with tempfile.TemporaryDirectory() as tmp:
        rss, out, err = (Path(tmp) / name for name in ("time", "out", "err"))
        start = time.perf_counter()
        with open(out, "wb") as out_f, open(err, "wb") as err_f:
            proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss), *cmd], cwd=ROOT, stdout=out_f,
                                    stderr=err_f, preexec_fn=cap, start_new_session=True)
        if during is not None:
            during()
        try:
            proc.wait(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            hung = True
        seconds = time.perf_counter() - start
        report = rss.read_text().splitlines() if rss.exists() else []
        lines, first = _lines(err)
        sizes = out.stat().st_size, err.stat().st_size
    peak = int(report[-1]) / 1024 if report and report[-1].isdigit() else 0.0
    signalled = next((line for line in report if "terminated by signal" in line), None)
    code = proc.returncode
    if hung:
        kind = "hang"
    elif signalled:
        kind = "crash"
    elif code == 3 and lines == 1 and sizes[1] <= MAX_ERROR_LINE:
        kind = "refused"
    elif code in (0, 1) and (sizes[0] or lines):  # rows, or error rows (a non-finite output is exit 1)
        kind = "ran"
    else:
        kind = "other"
    return Outcome(kind, code, seconds, peak, signalled or first, *sizes)


def _lines(path: Path) -> tuple[int, str]:
    """(newlines in the file, its first line cut to 200 characters), reading 1 MiB at a time."""
    count, head = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if not head:
                head = chunk[:4096]
            count += chunk.count(b"\n")
    return count, head.split(b"\n")[0][:200].decode("utf-8", "replace")


def truncate_live(base_bytes: bytes, rng, path: Path, images: Path, run) -> tuple[str, Outcome]:
    """A copy of the model, truncated to a random length at a random moment of the run."""
    path.write_bytes(base_bytes)
    length, delay = int(rng.integers(0, len(base_bytes))), float(rng.uniform(0, LIVE_MAX_DELAY))

    def cut() -> None:
        time.sleep(delay)
        os.truncate(path, length)

    outcome = run(path, images, cut)
    path.write_bytes(base_bytes[:length])  # what a rerun of the finding would see
    return f"truncated to {length:,} bytes after {delay:.2f} s", outcome


def attack_rounds(args, work: Path) -> int:
    """Round-robin over the classes for args.attack_seconds; returns the number of findings."""
    names = [c for c in (args.classes.split(",") if args.classes else [*CLASSES, "truncate-live"]) if c]
    unknown = set(names) - {*CLASSES, "truncate-live"}
    if unknown:
        sys.exit(f"unknown class(es): {', '.join(sorted(unknown))}")
    base = onnx.load(str(args.model))
    base_bytes = args.model.read_bytes()
    images = work / "images"
    images.mkdir(exist_ok=True)
    for i in range(LIVE_IMAGES):
        shutil.copy(args.image, images / f"{i}{args.image.suffix}")
    cap = int(args.cap_gib * GIB)

    def run(model: Path, inputs: Path, during=None) -> Outcome:
        cmd = [sys.executable, "-m", "alexnet_onnx.runtime.cli", "-m", str(model), str(inputs)]
        return run_capped(cmd, cap, args.timeout, during)

    stats = defaultdict(lambda: {"cases": 0, "outcomes": Counter(), "worst_s": 0.0, "peak_mib": 0.0})
    findings = []
    end = time.monotonic() + args.attack_seconds
    case = 0
    progress = Progress("hostile models")
    while time.monotonic() < end:
        name = names[case % len(names)]
        rng = np.random.default_rng([args.seed, case])
        path = work / f"attack-{case}.onnx"
        if name == "truncate-live":
            what, outcome = truncate_live(base_bytes, rng, path, images, run)
        else:
            what = CLASSES[name](base, rng, path)
            outcome = run(path, args.image)
        entry = stats[name]
        entry["cases"] += 1
        entry["outcomes"][outcome.kind] += 1
        entry["worst_s"] = max(entry["worst_s"], outcome.seconds)
        entry["peak_mib"] = max(entry["peak_mib"], outcome.peak_mib)
        if outcome.kind not in ("refused", "ran"):
            findings.append(_keep(args, name, case, what, outcome, path))
        path.unlink(missing_ok=True)
        case += 1
        progress.update(case, f"{name}: {outcome.kind} ({what})"[:100])
    progress.close()
    _print(stats, names, findings, args)
    return len(findings)


def _keep(args, name: str, case: int, what: str, outcome: Outcome, path: Path) -> str:
    args.findings.mkdir(parents=True, exist_ok=True)
    stem = args.findings / f"{name}-seed{args.seed}-case{case}"
    recipe = {"class": name, "seed": args.seed, "case": case, "built": what, "model": str(args.model),
              **outcome.__dict__}
    stem.with_suffix(".json").write_text(json.dumps(recipe, indent=1) + "\n")
    if path.stat().st_size <= KEEP_FILE_BYTES:
        shutil.copy(path, stem.with_suffix(".onnx"))
    return f"{name} case {case} ({what}): {outcome.kind}, exit {outcome.code}, {outcome.first_line!r} -> {stem}.*"


def _print(stats, names, findings, args) -> None:
    print(f"\nhostile-model classes ({args.model.name}, cap {args.cap_gib:g} GiB, timeout {args.timeout:g} s)")
    print(f"{'class':<15}{'cases':>6}  {'outcomes':<34}{'worst s':>8}{'peak MiB':>10}")
    for name in names:
        s = stats.get(name)
        if s:
            outcomes = ", ".join(f"{k} {v}" for k, v in s["outcomes"].most_common())
            print(f"{name:<15}{s['cases']:>6}  {outcomes:<34}{s['worst_s']:>8.2f}{s['peak_mib']:>10.0f}")
    for line in findings:
        print("FINDING " + line)
