#!/usr/bin/env bash
# Reproduce the GPU training table on one CUDA machine, from tarballs of ../shared/data:
#   mkdir -p .data && tar -czf .data/cifar10.tgz -C ../shared/data cifar10
#   tar -czf .data/flowers.tgz -C ../shared/data flowers
#   bash benchmarks/train_gpu.sh            # writes artifacts/bench-gpu/*/metrics.json and a summary
# Needs: torch with CUDA, torchvision, and this package installed (pip install -e '.[train]').
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-.data}
OUT=${OUT:-artifacts/bench-gpu}
DEVICE=${DEVICE:-cuda}            # DEVICE=cpu with small EPOCHS/LIMIT: a smoke run of this script
CIFAR_EPOCHS=${CIFAR_EPOCHS:-30}
FLOWERS_EPOCHS=${FLOWERS_EPOCHS:-60}
LIMIT=${LIMIT:+--limit-train $LIMIT}
for name in cifar10 flowers; do
  [ -d "$DATA/$name" ] || tar -xzf "$DATA/$name.tgz" -C "$DATA"
done
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

run() {  # name, then train-alexnet arguments
  local name=$1; shift
  local start=$(date +%s.%N)
  train-alexnet --device "$DEVICE" --out "$OUT/$name" $LIMIT "$@" 2>&1 | tail -n 4
  python - "$OUT/$name/metrics.json" "$name" "$start" <<'PY'
import json, sys, time
m = json.load(open(sys.argv[1]))
h = m["history"]
ips = sorted(e["img_per_s"] for e in h)[len(h) // 2]
print(f"RESULT {sys.argv[2]}: best val {m['best_val_top1']:.4f} test {m.get('test_top1', float('nan')):.4f} "
      f"train {m['wall_seconds']:.1f}s median {ips:.0f} img/s, wall {time.time() - float(sys.argv[3]):.0f}s")
PY
}

run cifar10-alexnet_cifar --dataset cifar10 --data-dir "$DATA/cifar10" --arch alexnet_cifar --epochs "$CIFAR_EPOCHS" --batch-size 512 --lr 0.2 \
  --label-smoothing 0.1 --ema 0.999 --tta
run flowers-alexnet --dataset flowers --data-dir "$DATA/flowers" --arch alexnet --epochs "$FLOWERS_EPOCHS" --batch-size 128 --lr 0.02 \
  --mixup 0.2 --ema 0.999 --tta
