"""onnx-bench's cold start: process start to first result, one image through `onnx-predict` in a
fresh process per run, and that process's peak resident memory.

Each run goes through a small launcher process that starts `onnx-predict`, times it and reads its
resource usage from wait4. Linux counts the memory a process had before its exec (the copy of
whoever forked it) into its peak RSS, so a direct child of the benchmark, which holds models,
would report the benchmark's own peak; the launcher is small, so the peak it reads is the
command's own (as GNU time does it, which this platform need not have).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_CODES, EXIT_INTERNAL, AlexnetOnnxError, first_line

# Runs one command (argv[1:]); prints its seconds from spawn to exit, exit code, peak RSS (KiB on
# Linux) and the end of its stderr as one JSON line. Standard library only, started with -S.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "code": os.waitstatus_to_exitcode(status),
                  "maxrss_kib": usage.ru_maxrss, "stderr": err[-4000:].decode("utf-8", "replace")}))
"""
KIB_PER_MIB = 1024
# Far beyond any cold start: a run still going then is stuck, and the launcher is stopped.
LAUNCH_TIMEOUT_S = 600


@dataclass(frozen=True)
class ColdStart:
    """Seconds from process start to the first result, per run, and the largest peak RSS."""

    command: tuple[str, ...]
    seconds: tuple[float, ...]
    peak_rss_mib: float

    @property
    def runs(self) -> int:
        return len(self.seconds)


class ColdStartError(AlexnetOnnxError):
    """A cold-start run of onnx-predict failed; the exit code is that run's (or 70 if unknown)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code if code in {entry.code for entry in EXIT_CODES} else EXIT_INTERNAL


def predict_command() -> list[str]:
    """The `onnx-predict` beside this interpreter, else the same program as `python -m`."""
    script = Path(sys.executable).parent / "onnx-predict"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "alexnet_onnx.runtime"]


def cold_start(model: Path, image: Path, deadline: float, *, min_runs: int) -> ColdStart:
    """`onnx-predict -m MODEL IMAGE` in fresh processes, one after another: at least `min_runs`,
    then more until `deadline` (time.perf_counter())."""
    command = [*predict_command(), "-m", str(model), "--decode", "exact", str(image)]
    seconds: list[float] = []
    peak_kib = 0
    while len(seconds) < min_runs or time.perf_counter() < deadline:
        run = _launch(command)
        if run["code"] != 0:
            lines = run["stderr"].strip().splitlines()
            why = lines[-1].removeprefix("error: ") if lines else f"exit {run['code']}, no message"
            raise ColdStartError(f"{model}: the cold-start run failed: {why}", run["code"])
        seconds.append(run["seconds"])
        peak_kib = max(peak_kib, run["maxrss_kib"])
    return ColdStart(tuple(command), tuple(seconds), peak_kib / KIB_PER_MIB)


def _launch(command: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *command], capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S, stdin=subprocess.DEVNULL)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"the cold-start launcher failed: {first_line(RuntimeError(proc.stderr))}") from None
