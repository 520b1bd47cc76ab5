"""Cold-start cost of classifying one image in a fresh process: onnx-predict vs a plain
torch + torchvision script on the same checkpoint. Reports median wall time and peak RSS, then
where onnx-predict's time goes (start-up phases, timed inside a fresh process each repeat).

    python benchmarks/predict_cold_start.py --checkpoint artifacts/demo/best.pt \
        --model artifacts/demo/model.onnx --image some.jpg [--repeats 5]

Both run in the same invocation, alternating, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
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
from alexnet_onnx.train.models import build_model
from alexnet_onnx.runtime.contract import Contract
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
c = Contract.from_metadata(ckpt["contract"])
model = build_model(c.arch, c.num_classes); model.load_state_dict(ckpt["model"]); model.eval()
p = c.preprocess
tf = T.Compose([T.Resize(p.resize), T.CenterCrop(p.crop), T.ToTensor(), T.Normalize(p.mean, p.std)])
with torch.no_grad():
    probs = model(tf(Image.open(sys.argv[2]).convert("RGB"))[None]).softmax(1)[0]
i = int(probs.argmax()); print(sys.argv[2], c.labels[i], float(probs[i]))
"""

# The steps onnx-predict takes for one image, each timed (perf_counter) in a fresh process.
PHASES_SCRIPT = """
import sys, time, json
t = [time.perf_counter()]
import click, alexnet_onnx.runtime.cli; t.append(time.perf_counter())
import numpy, PIL.Image; t.append(time.perf_counter())
import onnxruntime; t.append(time.perf_counter())
import alexnet_onnx.runtime.predictor, alexnet_onnx.runtime.classify; t.append(time.perf_counter())
from pathlib import Path
alexnet_onnx.runtime.predictor.open_model(Path(sys.argv[1]), reference_weights=True).close(); t.append(time.perf_counter())
p = alexnet_onnx.runtime.predictor.Predictor(sys.argv[1], few_images=True); t.append(time.perf_counter())
x = p.preprocess(sys.argv[2]); t.append(time.perf_counter())
p.predict([x]); t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""
PHASES = ("import click + runtime.cli", "import numpy + PIL", "import onnxruntime",
          "import runtime (image policy, formats)", "open + walk model (checks, references)",
          "Predictor (walk again, session, contract)", "decode + preprocess", "inference")


def phases(model: Path, image: Path, repeats: int) -> list[float]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", PHASES_SCRIPT, str(model), str(image)],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out))
    return [statistics.median(column) for column in zip(*runs)]


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
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--model", type=Path, action="append", required=True, help="repeat for several variants")
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode", action="append", choices=["exact", "fast"], help="repeat for both [default: exact]")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch script (e.g. camera photos)")
    args = ap.parse_args()
    decodes = args.decode or ["exact"]
    bin_dir = Path(sys.executable).parent
    commands = {} if args.no_torch else {
        "torch+torchvision script": [sys.executable, "-c", TORCH_SCRIPT, str(args.checkpoint), str(args.image)]}
    for model in args.model:
        for mode in decodes:
            commands[f"onnx-predict {model.name} --decode {mode}"] = [
                str(bin_dir / "onnx-predict"), "-m", str(model), "--decode", mode, str(args.image)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            results[name].append(measure(cmd))
    print(f"one image, cold process, median of {args.repeats} (cores: {len(os.sched_getaffinity(0))})")
    print(f"{'what':<48} {'seconds':>8} {'peak MiB':>9}")
    for name, runs in results.items():
        print(f"{name:<48} {statistics.median(s for s, _ in runs):>8.3f} {max(m for _, m in runs):>9.0f}")
    for model in args.model:
        print(f"\nonnx-predict {model.name}: start-up phases, median ms of {args.repeats} fresh processes")
        for label, seconds in zip(PHASES, phases(model, args.image, args.repeats)):
            print(f"  {label:<38} {1000 * seconds:8.1f}")


if __name__ == "__main__":
    main()
