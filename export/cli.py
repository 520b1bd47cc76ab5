"""`export-onnx`: checkpoint -> one self-describing ONNX file, parity-checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from alexnet_onnx.runtime.cliutil import Command, debug_option, run


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .onnx file to write.")
@click.option("--quantize", default="none", show_default=True, type=click.Choice(["none", "int8", "fp16", "all"]),
              help="none: fp32 at -o; int8 (static, calibrated) or fp16 at -o; all: fp32 at -o plus NAME.int8.onnx "
                   "and NAME.fp16.onnx beside it.")
@click.option("--calib-dir", type=click.Path(path_type=Path),
              help="Images for int8 calibration [default: the checkpoint's training split].")
@click.option("--calib-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--calib-method", default="minmax", show_default=True, type=click.Choice(["minmax", "entropy", "percentile"]))
@click.option("--verify-dir", type=click.Path(path_type=Path),
              help="Images for the parity check (ImageFolder for accuracy) [default: the checkpoint's val split].")
@click.option("--verify-size", default=256, show_default=True, type=click.IntRange(min=0),
              help="At most this many real images in the parity check.")
@click.option("--max-drop", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Largest top-1 drop (percentage points) accepted for reduced-precision variants.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the parity report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@debug_option
def main(
    checkpoint: Path,
    output: Path,
    quantize: str,
    calib_dir: Optional[Path],
    calib_size: int,
    calib_method: str,
    verify_dir: Optional[Path],
    verify_size: int,
    max_drop: float,
    report_path: Optional[Path],
    force: bool,
    debug: bool,
) -> None:
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

    Exit codes: 0 ok, 2 usage (e.g. output exists without --force), 3 bad checkpoint or failed
    parity gate, 4 I/O.
    """

    def go() -> int:
        from .pipeline import export_checkpoint

        export_checkpoint(
            checkpoint,
            output,
            quantize=quantize,
            calib_dir=calib_dir,
            calib_size=calib_size,
            calib_method=calib_method,
            verify_dir=verify_dir,
            verify_size=verify_size,
            max_drop=max_drop,
            report_path=report_path,
            force=force,
            log=lambda message: click.echo(message, err=True),
        )
        return 0

    run(go, debug=debug)


if __name__ == "__main__":
    main()
