"""`onnx-bench`: how exported models run on this machine, no PyTorch needed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .bench import DEFAULT_BATCHES, DEFAULT_SECONDS, FORMATS, BenchConfig
from .cliutil import Command, debug_option, run
from .errors import EXIT_OK, exit_codes_help
from .progress import Progress


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]}, epilog=exit_codes_help())
@click.argument("models", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--seconds", default=DEFAULT_SECONDS, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Time per model, shared by the phases (each still runs a few times at least).")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS),
              help="json: one object on standard output (fields: docs/performance.md).")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also time decoding and preprocessing this image, and image-to-prediction latency.")
@click.option("--threads", multiple=True, type=click.IntRange(min=1),
              help="Thread count to measure; repeat for several [default: 1 and the usable cores].")
@click.option("--batch-size", "batches", multiple=True, type=click.IntRange(min=1),
              help=f"Batch size for throughput; repeat for several [default: {', '.join(map(str, DEFAULT_BATCHES))}].")
@debug_option
def main(models: tuple[Path, ...], seconds: float, fmt: str, image: Path | None, threads: tuple[int, ...],
         batches: tuple[int, ...], debug: bool) -> None:
    """Measure MODELs (e.g. the fp32, int8 and fp16 files of one export) here: cold start in a fresh
    onnx-predict process (median, peak RSS), single-stream latency p50/p90/p99 at batch 1 and
    model-only throughput at several batch sizes, thread counts and side-by-side streams; then name
    the fastest model whose contract records a passed parity gate.

    \b
    Examples:
      onnx-bench m.onnx m.int8.onnx m.fp16.onnx
      onnx-bench m.onnx m.int8.onnx --seconds 60 --image cat.jpg --format json > bench.json
    """

    def go() -> int:
        from .bench import benchmark, machine
        from .bench_report import text_report, to_json

        config = BenchConfig(models=models, seconds=seconds, image=image, threads=threads,
                             batches=batches or DEFAULT_BATCHES, fmt=fmt)
        with Progress("onnx-bench", total=len(models) * config.steps()) as progress:
            benches = benchmark(config, on_phase=lambda done, status: progress.update(done, status))
        about = machine()
        click.echo(json.dumps(to_json(benches, config, about)) if fmt == "json" else text_report(benches, config, about))
        return EXIT_OK

    run(go, debug=debug)


if __name__ == "__main__":
    main()
