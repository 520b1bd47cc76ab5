"""`train-alexnet`: train or fine-tune AlexNet; writes OUT/best.pt, last.pt, metrics.json, curves.png."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

import click

from runtime.cliutil import Command, debug_option, fail, run
from runtime.errors import EXIT_INTERRUPTED


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dataset", required=True, type=click.Choice(["cifar10", "flowers", "folder"]))
@click.option("--data-dir", required=True, type=click.Path(path_type=Path),
              help="cifar10: cifar-10-batches-py/ or train/+test/ ImageFolder; flowers/folder: train/ [val/] [test/].")
@click.option("--arch", required=True, type=click.Choice(["alexnet", "alexnet_cifar"]))
@click.option("--epochs", required=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", type=float, help="Peak learning rate [default: 0.05 alexnet_cifar, 0.02 alexnet, 0.002 with --pretrained/--weights].")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"]))
@click.option("--weight-decay", default=5e-4, show_default=True, type=float)
@click.option("--label-smoothing", default=0.1, show_default=True, type=float)
@click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "constant"]),
              help="After a linear warmup of --warmup-fraction of the steps.")
@click.option("--warmup-fraction", default=0.15, show_default=True, type=float)
@click.option("--limit-train", type=int, help="Train on a seeded, class-balanced subset of N images.")
@click.option("--val-fraction", default=0.1, show_default=True, type=float,
              help="Seeded share of train/ held out for validation when there is no val/ (0: keep the last epoch).")
@click.option("--out", default=Path("artifacts/run"), show_default=True, type=click.Path(path_type=Path))
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt with its saved settings.")
@click.option("--pretrained", is_flag=True, help="Start from torchvision's ImageNet weights (alexnet).")
@click.option("--weights", type=click.Path(path_type=Path), help="Start from a local AlexNet state dict.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="DataLoader worker processes [default: 0 on CPU, min(8, cores) on CUDA].")
@click.option("--max-bad-images", default=100, show_default=True, type=int,
              help="Unreadable images skipped before the run aborts.")
@click.option("--mixup", default=0.0, show_default=True, type=float, help="Mixup Beta(a, a); 0 = off.")
@click.option("--cutmix", default=0.0, show_default=True, type=float, help="CutMix Beta(a, a); 0 = off (with both, one per batch).")
@click.option("--ema", default=0.0, show_default=True, type=float,
              help="Decay of an EMA of the weights, which validation scores and export ships; 0 = off.")
@click.option("--tta", is_flag=True, help="Validate, test and export the mean of image and mirror-image logits.")
@click.option("--freeze", default="none", show_default=True, type=click.Choice(["none", "features", "all-but-head"]),
              help="Layers kept fixed when fine-tuning alexnet.")
@click.option("--backbone-lr-mult", type=float,
              help="Learning-rate factor for everything but the head [default: 0.1 with --pretrained/--weights, else 1].")
@click.option("--cache", default="auto", show_default=True, type=click.Choice(["auto", "none", "memory"]),
              help="memory: decode once and augment batches on the device; none: DataLoader each epoch; "
                   "auto: memory on CUDA, none on CPU.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (CUDA only).")
@debug_option
def main(debug: bool, resume: bool, lr: Optional[float], workers: Optional[int], backbone_lr_mult: Optional[float],
         compile_: bool, **options) -> None:
    """Train AlexNet on CIFAR-10, flowers or any ImageFolder.

    \b
    Examples:
      train-alexnet --dataset cifar10 --data-dir data/cifar10 --arch alexnet_cifar --epochs 30
      train-alexnet --dataset flowers --data-dir data/flowers --arch alexnet --pretrained --epochs 10
      train-alexnet --dataset cifar10 --data-dir data/cifar10 --arch alexnet_cifar --epochs 30 --resume

    Under `torchrun --nproc_per_node=N train-alexnet ...` it trains with DDP (gloo on CPU, NCCL
    on CUDA); --batch-size is the global batch; only rank 0 writes files.

    Exit codes: 0 ok, 2 usage, 3 bad data/checkpoint, 4 I/O, 5 diverged, 130 interrupted.
    """

    def go() -> int:
        from runtime.errors import UsageError

        from .config import TrainConfig
        from .loop import train
        from .models import ARCHS

        signal.signal(signal.SIGTERM, _raise_interrupt)
        fine_tune = options["pretrained"] or options["weights"] is not None
        default_lr = ARCHS[options["arch"]].default_lr / (10 if fine_tune else 1)
        cfg_options = {**options, "data_dir": str(options["data_dir"]), "out": str(options["out"]),
                       "weights": str(options["weights"]) if options["weights"] else None}
        try:
            mult = backbone_lr_mult if backbone_lr_mult is not None else (0.1 if fine_tune else 1.0)
            cfg = TrainConfig(lr=default_lr if lr is None else lr, workers=workers, backbone_lr_mult=mult,
                              compile=compile_, **cfg_options)
        except TypeError as exc:  # pragma: no cover - option/config drift
            raise UsageError(str(exc)) from None
        try:
            metrics = train(cfg, resume=resume)
        except KeyboardInterrupt:
            last = Path(cfg.out) / "last.pt"
            if last.exists():
                fail(f"interrupted; {last} holds the last finished epoch (continue with --resume)", EXIT_INTERRUPTED)
            fail("interrupted before the first epoch finished; nothing to resume", EXIT_INTERRUPTED)
        if os.environ.get("RANK", "0") != "0":
            return 0  # under torchrun only rank 0 reports
        best = metrics.get("best_val_top1")
        test = metrics.get("test_top1")
        click.echo(f"done: best val top-1 {best:.4f}" + (f", test top-1 {test:.4f}" if test is not None else "")
                   + f"; checkpoints in {cfg.out}/" if best is not None else f"done; see {cfg.out}/")
        return 0

    run(go, debug=debug)



if __name__ == "__main__":
    main()
