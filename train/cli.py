"""`train-alexnet`: train or fine-tune AlexNet; writes OUT/best.pt, last.pt, metrics.json, curves.png."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

import click

from alexnet_onnx.runtime.cliutil import Command, debug_option, fail, run
from alexnet_onnx.runtime.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, UsageError, exit_codes_help

from .config import ARCHS, CACHES, DATASETS, DEFAULTS, DEVICES, FLIPS, FREEZE, INITS, OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


D = DEFAULTS


def _recipes_help() -> str:
    def flag(key: str, value) -> str:
        name = key.replace("_", "-")
        if isinstance(value, bool):
            return f"--{name}" if value else f"--no-{name}"
        return f"--{name} {value}"

    return "; ".join(f"{name}: " + " ".join(flag(k, v) for k, v in values.items()) for name, values in RECIPES.items())


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=exit_codes_help(EXIT_DIVERGED))
@click.option("--recipe", type=click.Choice(sorted(RECIPES)),
              help=f"A named preset for every option you do not give ({_recipes_help()}).")
@click.option("--dataset", type=click.Choice(DATASETS), help="Required unless --recipe sets it.")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path),
              help="cifar10: cifar-10-batches-py/ or train/+test/ ImageFolder; flowers/folder: train/ [val/] [test/].")
@click.option("--arch", type=click.Choice(tuple(ARCHS)), help="Required unless --recipe sets it.")
@click.option("--epochs", type=int, help="Required unless --recipe sets it.")
@click.option("--batch-size", default=D["batch_size"], show_default=True, type=int,
              help="Images per step; under torchrun the global batch, a multiple of the process count.")
@click.option("--lr", type=float, help="Peak learning rate [default: " + ", ".join(
    f"{spec.default_lr} {name}" for name, spec in ARCHS.items()) + "; a tenth of that with --pretrained/--weights].")
@click.option("--optimizer", default=D["optimizer"], show_default=True, type=click.Choice(OPTIMIZERS))
@click.option("--weight-decay", default=D["weight_decay"], show_default=True, type=float)
@click.option("--label-smoothing", default=D["label_smoothing"], show_default=True, type=float,
              help="Share of each target spread over all classes. Above 0 the model comes out under-confident "
                   "in a way export's temperature cannot fully undo, and 'none of these' separates worse.")
@click.option("--dropout", type=float, help="Dropout before the hidden fully connected layers [default: " + ", ".join(
    f"{spec.dropout} {name}" for name, spec in ARCHS.items()) + "].")
@click.option("--schedule", default=D["schedule"], show_default=True, type=click.Choice(SCHEDULES),
              help="After a linear warmup of --warmup-fraction of the steps: decay to zero along a half cosine or a line, or none.")
@click.option("--warmup-fraction", default=D["warmup_fraction"], show_default=True, type=float)
@click.option("--limit-train", type=int, help="Train on a seeded, class-balanced subset of N images.")
@click.option("--val-fraction", default=D["val_fraction"], show_default=True, type=float,
              help="Seeded share of train/ held out for validation when there is no val/ (0: keep the last epoch).")
@click.option("--out", default=Path(D["out"]), show_default=True, type=click.Path(path_type=Path))
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt with its saved settings.")
@click.option("--pretrained", is_flag=True, help="Start from torchvision's ImageNet weights (alexnet).")
@click.option("--weights", type=click.Path(path_type=Path), help="Start from a local AlexNet state dict.")
@click.option("--device", default=D["device"], show_default=True, type=click.Choice(DEVICES))
@click.option("--seed", default=D["seed"], show_default=True, type=int)
@click.option("--workers", type=int, help="DataLoader worker processes [default: 0 on CPU, min(8, cores) on CUDA].")
@click.option("--max-bad-images", default=D["max_bad_images"], show_default=True, type=int,
              help="Unreadable images skipped before the run aborts.")
@click.option("--mixup", default=D["mixup"], show_default=True, type=float, help="Mixup Beta(a, a); 0 = off.")
@click.option("--cutmix", default=D["cutmix"], show_default=True, type=float,
              help="CutMix Beta(a, a); 0 = off (with both, one per batch).")
@click.option("--translate", type=int,
              help="32-px archs: the most pixels a training crop shifts (reflect padding) [default: crop // 8 = 4].")
@click.option("--cutout", default=D["cutout"], show_default=True, type=int,
              help="Cutout: an N x N square of each training crop, centred at a random pixel, set to the mean; 0 = off.")
@click.option("--flip", default=D["flip"], show_default=True, type=click.Choice(FLIPS),
              help="Training mirror images: random (p = 1/2 per crop) or alternate (each image mirrored in every "
                   "other epoch, from a seeded first epoch).")
@click.option("--init", default=D["init"], show_default=True, type=click.Choice(INITS),
              help="alexnet_cifar from scratch: whiten = the first conv starts as a whitening of 3x3 training "
                   "patches (each eigenvector and its negative, scaled by 1/sqrt(eigenvalue + 5e-4)).")
@click.option("--ema", default=D["ema"], show_default=True, type=float,
              help="Decay of an EMA of the weights, which validation scores and export ships; 0 = off.")
@click.option("--tta/--no-tta", default=D["tta"], show_default=True, help="Validate, test and export the mean of image and mirror-image logits.")
@click.option("--freeze", default=D["freeze"], show_default=True, type=click.Choice(FREEZE),
              help="Layers kept fixed when fine-tuning alexnet.")
@click.option("--backbone-lr-mult", type=float,
              help="Learning-rate factor for everything but the head [default: 0.1 with --pretrained/--weights, else 1].")
@click.option("--cache", default=D["cache"], show_default=True, type=click.Choice(CACHES),
              help="memory: decode once and augment batches on the device; none: DataLoader each epoch; "
                   "auto: memory on CUDA, none on CPU. Both apply the same augmentation.")
@click.option("--precision", default=D["precision"], show_default=True, type=click.Choice(PRECISIONS),
              help="Training arithmetic: bf16 autocast or fp32; auto: bf16 on CUDA and on x86 CPUs with AMX or "
                   "AVX512_BF16 (about 2x faster there), fp32 elsewhere. Validation and test follow it on CUDA and are "
                   "fp32 on CPU, as export is.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (CUDA only).")
@debug_option
def main(debug: bool, resume: bool, recipe: Optional[str], compile_: bool, **options) -> None:
    """Train AlexNet on CIFAR-10, flowers or any ImageFolder.

    \b
    Examples:
      train-alexnet --dataset cifar10 --data-dir data/cifar10 --arch alexnet_cifar --epochs 30
      train-alexnet --dataset flowers --data-dir data/flowers --arch alexnet --pretrained --epochs 10
      train-alexnet --dataset cifar10 --data-dir data/cifar10 --arch alexnet_cifar --epochs 30 --resume
      train-alexnet --recipe cifar10-cpu --data-dir data/cifar10 --out artifacts/cifar10-cpu

    Under `torchrun --nproc_per_node=N train-alexnet ...` it trains with DDP (gloo on CPU, NCCL
    on CUDA); --batch-size is the global batch; only rank 0 writes files.
    """

    ctx = click.get_current_context()
    given = {name for name in options if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}

    def go() -> int:
        from .config import TrainConfig
        from .loop import train

        signal.signal(signal.SIGTERM, _raise_interrupt)
        values = {**options, **{k: v for k, v in RECIPES.get(recipe, {}).items() if k not in given}}
        missing = [name for name in ("dataset", "arch", "epochs") if values[name] is None]
        if missing:
            raise UsageError("missing " + ", ".join("--" + m for m in missing) + " (or give --recipe NAME)")
        values.update(data_dir=str(values["data_dir"]), out=str(values["out"]), compile=compile_,
                      weights=str(values["weights"]) if values["weights"] else None)
        cfg = TrainConfig(**values)
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
