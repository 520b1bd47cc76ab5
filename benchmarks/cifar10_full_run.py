"""The full-scale CIFAR-10 run and every accuracy figure docs/results.md holds, in one
go: `train-alexnet --recipe cifar10-cpu`, interrupted once with Ctrl-C (SIGINT) during epoch 2 and
continued with --resume, then the exported variants (fp32, int8 by each calibration method, fp16)
measured on all 10,000 test images with `onnx-predict --eval` and against PyTorch image by image,
and their latency.

    python benchmarks/cifar10_full_run.py --data-dir ../shared/data/cifar10 \
        [--out artifacts/cifar10-cpu] [--models artifacts/c10] [--measure-only] [-- extra train-alexnet flags]

Each calibration method's int8 model is written and measured even when it fails the export's
default gate (--max-drop 100); the gate's verdict is in the log and its parity report.
--measure-only skips training and measures OUT/best.pt again.

Everything goes to OUT/full_run.log (commands with their exit codes and wall times); the figures
land beside the models (parity*.json, eval.*.json, eval_parity.json). Expect 20 to 60 minutes of
training on 2 CPU cores with bf16 (an AMD EPYC with AVX512_BF16: 68 s per epoch; an Intel Xeon
with AMX: ~225 s), then 10 to 20 minutes of measuring.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CALIBRATIONS = ("entropy", "percentile")  # minmax is --quantize all's int8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 as an ImageFolder: train/ and test/")
    ap.add_argument("--out", type=Path, default=Path("artifacts/cifar10-cpu"))
    ap.add_argument("--models", type=Path, default=Path("artifacts/c10"))
    ap.add_argument("--interrupt-after", type=float, default=30.0,
                    help="seconds into epoch 2 at which the run gets SIGINT (0: no interruption); "
                         "keep it under one epoch's time")
    ap.add_argument("--measure-only", action="store_true", help="no training: measure OUT/best.pt")
    ap.add_argument("train_args", nargs="*", help="extra train-alexnet flags (after --)")
    args = ap.parse_args()
    if not (args.data_dir / "test").is_dir():
        print(f"{args.data_dir}: no test/ folder; the measurements need CIFAR-10 as an ImageFolder "
              "(train/ and test/, as ../shared/data/cifar10 is)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.models.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "full_run.log")
    log.run("lscpu | grep 'Model name'")

    if not args.measure_only and not train(args, log):
        return 1
    ckpt, test, m = args.out / "best.pt", args.data_dir / "test", args.models
    verify = f"--verify-dir {shlex.quote(str(test))} --verify-size 10000"
    log.run(f"{BIN}/export-onnx {ckpt} -o {m}/c10.onnx --quantize all {verify} --report {m}/parity.json --force")
    for method in CALIBRATIONS:
        log.run(f"{BIN}/export-onnx {ckpt} -o {m}/c10.{method}.int8.onnx --quantize int8 --calib-method {method} "
                f"{verify} --max-drop 100 --report {m}/parity.{method}.json --force")
    models = ["c10", "c10.int8", "c10.fp16"] + [f"c10.{method}.int8" for method in CALIBRATIONS]
    for name in models:
        log.run(f"{BIN}/onnx-predict -m {m}/{name}.onnx --eval {shlex.quote(str(test))} --format json > {m}/eval.{name}.json")
    log.run(f"{BIN}/python benchmarks/eval_parity.py --checkpoint {ckpt} --dir {shlex.quote(str(test))} "
            + " ".join(f"--model {m}/{name}.onnx" for name in models) + f" --json {m}/eval_parity.json")
    log.run(f"{BIN}/python benchmarks/variant_latency.py {m}/c10.onnx {m}/c10.int8.onnx {m}/c10.fp16.onnx")
    return 0


def train(args: argparse.Namespace, log: "Log") -> bool:
    """The recipe's run into OUT, SIGINT'ed once in epoch 2 and resumed (unless --interrupt-after 0)."""
    command = [str(BIN / "train-alexnet"), "--recipe", "cifar10-cpu", "--data-dir", str(args.data_dir),
               "--out", str(args.out), *args.train_args]
    start = time.monotonic()
    if args.interrupt_after > 0:
        rc = log.interrupted(command, args.out / "part1.log", "epoch 1/", args.interrupt_after)
        if rc != 130:
            log.line(f"the interrupted part ended with {rc}, not 130")
            return False
        command.append("--resume")
    if log.run(shlex.join(command) + f" > {shlex.quote(str(args.out / 'part2.log'))} 2>&1"):
        return False
    log.line(f"training, end to end: {time.monotonic() - start:.0f} s")
    return True


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path

    def line(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(f"[{time.strftime('%F %T')}] {text}\n")

    def run(self, command: str) -> int:
        self.line(f"$ {command}")
        start = time.monotonic()
        with self.path.open("a") as f:
            rc = subprocess.run(command, shell=True, stdout=f, stderr=subprocess.STDOUT).returncode
        self.line(f"exit {rc}, {time.monotonic() - start:.0f} s")
        return rc

    def interrupted(self, command: list[str], output: Path, marker: str, seconds: float) -> int:
        """Run `command` until `marker` appears in its output, then `seconds` more, then SIGINT
        it as Ctrl-C would. SIGINT is reset to its default in the child: a background shell
        starts its jobs with SIGINT ignored, and Python would keep it ignored."""
        self.line(f"$ {shlex.join(command)} > {output} 2>&1  (SIGINT {seconds:.0f} s after {marker!r})")
        with output.open("w") as f:
            proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while marker not in output.read_text() and proc.poll() is None:
            time.sleep(2)
        if proc.poll() is None:
            time.sleep(seconds)
            proc.send_signal(signal.SIGINT)
            self.line("sent SIGINT")
        rc = proc.wait()
        self.line(f"exit {rc}")
        return rc


if __name__ == "__main__":
    sys.exit(main())
