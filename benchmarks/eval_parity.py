"""PyTorch vs the exported model(s), image by image, on a labeled ImageFolder: the same top-1
counts, or every image where they differ listed with both answers and PyTorch's logit margin.

    python benchmarks/eval_parity.py --checkpoint best.pt --dir ../shared/data/cifar10/test \
        --model m.onnx --model m.int8.onnx --model m.fp16.onnx [--json out.json]

PyTorch runs the checkpoint's shipped model (EMA weights, flip averaging if the run used them)
on the runtime's own preprocessing of each file, so every difference is the model file's, not
the input's. Each ONNX model runs through runtime.Predictor, as `onnx-predict --eval` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from alexnet_onnx.export.onnx_export import model_from_checkpoint
from alexnet_onnx.runtime import Predictor
from alexnet_onnx.runtime.evaluate import labeled_images
from alexnet_onnx.runtime.session import available_cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--show", type=int, default=10, help="list at most this many differing images per model")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    model, contract, _ = model_from_checkpoint(args.checkpoint)
    torch.set_num_threads(available_cores())
    labels = list(contract.labels)
    items = labeled_images(args.dir, contract.labels)  # onnx-predict --eval's images, in its order
    truth = np.array([t for _, t in items])
    reference = Predictor(args.model[0])  # the runtime's preprocessing, for PyTorch's inputs too
    inputs = np.stack([reference.preprocess(path) for path, _ in items])
    with torch.no_grad():
        torch_logits = np.concatenate([model(torch.from_numpy(inputs[i:i + args.batch_size])).numpy()
                                       for i in range(0, len(inputs), args.batch_size)])
    torch_top1 = torch_logits.argmax(1)
    ranked = np.sort(torch_logits, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(confusion, (truth, torch_top1), 1)
    figures = {"images": len(items), "pytorch_top1": float((torch_top1 == truth).mean()),
               "pytorch_confusion": {"labels": labels, "rows_truth_columns_predicted": confusion.tolist()}, "models": {}}
    print(f"{len(items)} images in {args.dir}; PyTorch ({args.checkpoint}) top-1 {figures['pytorch_top1']:.4f} "
          f"({int((torch_top1 == truth).sum())} correct); confusion (rows: truth, columns: predicted):")
    width = max(5, *(len(label) for label in labels))
    print(" " * width + "".join(f"{label[:5]:>6}" for label in labels))
    for label, row in zip(labels, confusion):
        print(f"{label:<{width}}" + "".join(f"{n:>6}" for n in row))
    for path in args.model:
        predictor = Predictor(path)
        logits = np.concatenate([predictor.logits(inputs[i:i + args.batch_size]) for i in range(0, len(inputs), args.batch_size)])
        top1 = logits.argmax(1)
        differ = np.flatnonzero(top1 != torch_top1)
        row = {"top1": float((top1 == truth).mean()), "correct": int((top1 == truth).sum()),
               "agreement": float(1 - len(differ) / len(items)), "differing_images": len(differ),
               "max_abs_logit_diff": float(np.abs(logits - torch_logits).max())}
        figures["models"][str(path)] = row
        print(f"{path.name}: top-1 {row['top1']:.4f} ({row['correct']} correct, "
              f"{row['correct'] - int((torch_top1 == truth).sum()):+d} vs PyTorch), agreement {row['agreement']:.4%} "
              f"({len(differ)} images differ), max |logit diff| {row['max_abs_logit_diff']:.3g}")
        for i in differ[: args.show]:
            print(f"  {items[i][0]}: truth {labels[truth[i]]}, PyTorch {labels[torch_top1[i]]} "
                  f"(margin {margin[i]:.3g}), {path.name} {labels[top1[i]]}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
