"""Time and peak memory of one command in a fresh process, for the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_measured(cmd: list[str], timeout: float) -> tuple[int, float, float]:
    """(exit code, seconds, peak RSS MiB) of `cmd`, killed (exit -9) past `timeout`. GNU time
    reports the peak: a child's own ru_maxrss would include a large parent's, inherited across
    fork and exec."""
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return -9, time.perf_counter() - start, 0.0
    seconds = time.perf_counter() - start
    return proc.returncode, seconds, int(err.strip().splitlines()[-1]) / 1024
