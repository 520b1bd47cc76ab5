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
              help="Images for int8 calibration [default: the checkpoint's training split].")
@click.option("--calib-size", default=D["calib_size"], show_default=True, type=click.IntRange(min=MINIMUMS["calib_size"]))
@click.option("--calib-method", default=D["calib_method"], show_default=True, type=click.Choice(CHOICES["calib_method"]))
@click.option("--verify-dir", default=D["verify_dir"], type=click.Path(path_type=Path),
              help="Images for the parity check (ImageFolder for accuracy) [default: the checkpoint's val split].")
@click.option("--verify-size", default=D["verify_size"], show_default=True, type=click.IntRange(min=MINIMUMS["verify_size"]),
              help="At most this many real images in the parity check.")
@click.option("--max-drop", default=D["max_drop"], show_default=True, type=click.FloatRange(min=MINIMUMS["max_drop"]),
              help="Largest top-1 drop (percentage points) accepted for reduced-precision variants.")
@click.option("--report", "report_path", default=D["report_path"], type=click.Path(path_type=Path),
              help="Write the parity report as JSON.")
@click.option("--force", is_flag=True, default=D["force"], help="Replace an existing output file.")
@debug_option
def main(checkpoint: Path, output: Path, debug: bool, **options) -> None:
    """Export CHECKPOINT (from train-alexnet) to ONNX and prove it matches PyTorch.

    The contract (labels, preprocessing, provenance) goes into the model's metadata, so
    onnx-predict needs nothing else. Gates: fp32 needs max |logit diff| <= 1e-4 and 100% top-1
    agreement with PyTorch on random and real images; int8/fp16 need a top-1 drop against
    PyTorch of at most --max-drop points on the verify images. A variant that fails is not
    written and the exit code is 3. Every run prints a table (size, latency on this machine,
    accuracy, agreement) and writes it to NAME.report.md beside the model.

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
