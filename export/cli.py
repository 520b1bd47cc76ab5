"""`export-onnx`: checkpoint -> one self-describing ONNX file, parity-checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from alexnet_onnx.runtime.cliutil import Command, debug_option, run
from alexnet_onnx.runtime.errors import exit_codes_help

from .options import CHOICES, DEFAULTS, MINIMUMS, ExportOptions

D = DEFAULTS


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=exit_codes_help())
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .onnx file to write.")
@click.option("--quantize", default=D["quantize"], show_default=True, type=click.Choice(CHOICES["quantize"]),
              help="none: fp32 at -o; int8 (static, calibrated) or fp16 at -o; all: fp32 at -o plus NAME.int8.onnx "
                   "and NAME.fp16.onnx beside it.")
@click.option("--calib-dir", default=D["calib_dir"], type=click.Path(path_type=Path),
              help="int8 only: images that set the int8 activation ranges [default: the checkpoint's training split].")
@click.option("--calib-size", default=D["calib_size"], show_default=True, type=click.IntRange(min=MINIMUMS["calib_size"]),
              help="int8 only: at most this many images for the activation ranges.")
@click.option("--calib-method", default=D["calib_method"], show_default=True, type=click.Choice(CHOICES["calib_method"]),
              help="int8 only: how the activation ranges are chosen.")
@click.option("--verify-dir", default=D["verify_dir"], type=click.Path(path_type=Path),
              help="Images for the parity check (ImageFolder for accuracy) [default: the checkpoint's val split].")
@click.option("--verify-size", default=D["verify_size"], show_default=True, type=click.IntRange(min=MINIMUMS["verify_size"]),
              help="At most this many real images in the parity check, and in the score check on the "
                   "checkpoint's test split.")
@click.option("--max-drop", default=D["max_drop"], show_default=True, type=click.FloatRange(min=MINIMUMS["max_drop"]),
              help="Largest top-1 drop (percentage points) accepted for reduced-precision variants.")
@click.option("--max-class-drop", "max_class_drop", default=D["max_class_drop"], metavar="PP",
              type=click.FloatRange(min=MINIMUMS["max_class_drop"]),
              help="Also refuse a reduced-precision variant whose worst class's top-1 drops more than PP points "
                   "[default: off].")
@click.option("--temperature", default=D["temperature"], show_default=True, metavar="fit|none|VALUE",
              help="The T of the scores softmax(logits / T), stored in the contract: fit (on the checkpoint's "
                   "validation split, minimizing NLL), none (T = 1) or a number. Not the int8 --calib-* options.")
@click.option("--accept-score", default=D["accept_score"], show_default=True, type=click.Choice(CHOICES["accept_score"]),
              help="The score whose threshold (accepting 95% of the validation split) marks an image as none of "
                   "the model's classes.")
@click.option("--report", "report_path", default=D["report_path"], type=click.Path(path_type=Path),
              help="Write the parity report as JSON.")
@click.option("--force", is_flag=True, default=D["force"], help="Replace an existing output file.")
@debug_option
def main(checkpoint: Path, output: Path, debug: bool, **options) -> None:
    """Export CHECKPOINT (from train-alexnet) to ONNX and prove it matches PyTorch.

    The contract (labels, preprocessing, provenance) goes into the model's metadata, so
    onnx-predict needs nothing else. Gates: fp32 needs max |logit diff| <= 1e-4 and 100% top-1
    agreement with PyTorch on random and real images; int8/fp16 need a top-1 drop against
    PyTorch of at most --max-drop points on the verify images (and, with --max-class-drop, no
    class dropping more). A variant that fails is not written and the exit code is 3.

    Scores are softmax(logits / T): T and a "none of these" threshold are fitted on the
    checkpoint's validation split (never its test split) and stored in the contract; the graph is
    unchanged. Every run prints tables (size, latency on this machine, accuracy, agreement,
    worst class; ECE and NLL before and after T) and writes them to NAME.report.md beside the
    model, with reliability diagrams in NAME.reliability.png.

    \b
    Examples:
      export-onnx artifacts/run/best.pt -o model.onnx --report parity.json
      export-onnx artifacts/run/best.pt -o model.onnx --quantize all --verify-dir data/test
    """

    def go() -> int:
        from .pipeline import export_checkpoint

        export_checkpoint(checkpoint, output, ExportOptions(**options), log=lambda message: click.echo(message, err=True))
        return 0

    run(go, debug=debug)


if __name__ == "__main__":
    main()
