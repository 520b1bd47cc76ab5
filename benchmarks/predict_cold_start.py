"""Cold-start cost of classifying one image in a fresh process: onnx-predict vs a plain
torch + torchvision script on the same checkpoint. Reports median wall time and peak RSS.

    python benchmarks/predict_cold_start.py --checkpoint artifacts/demo/best.pt \
        --model artifacts/demo/model.onnx --image some.jpg [--repeats 5]

Both run in the same invocation, alternating, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TORCH_SCRIPT = """
import sys, torch
from PIL import Image
from torchvision import transforms as T
from train.models import build_model
from runtime.contract import Contract
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
c = Contract.from_metadata(ckpt["contract"])
model = build_model(c.arch, c.num_classes); model.load_state_dict(ckpt["model"]); model.eval()
p = c.preprocess
tf = T.Compose([T.Resize(p.resize), T.CenterCrop(p.crop), T.ToTensor(), T.Normalize(p.mean, p.std)])
with torch.no_grad():
    probs = model(tf(Image.open(sys.argv[2]).convert("RGB"))[None]).softmax(1)[0]
i = int(probs.argmax()); print(sys.argv[2], c.labels[i], float(probs[i]))
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", required=True, help="repeat for several variants")
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    commands = {"torch+torchvision script": [sys.executable, "-c", TORCH_SCRIPT, str(args.checkpoint), str(args.image)]}
    for model in args.model:
        commands[f"onnx-predict {model.name}"] = [str(bin_dir / "onnx-predict"), "-m", str(model), str(args.image)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            results[name].append(measure(cmd))
    print(f"one image, cold process, median of {args.repeats} (cores: {len(os.sched_getaffinity(0))})")
    print(f"{'what':<40} {'seconds':>8} {'peak MiB':>9}")
    for name, runs in results.items():
        print(f"{name:<40} {statistics.median(s for s, _ in runs):>8.3f} {max(m for _, m in runs):>9.0f}")


if __name__ == "__main__":
    main()
