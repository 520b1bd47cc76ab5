"""`onnx-serve`: the exported model as a long-running HTTP service, no PyTorch needed."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import click

from .cliutil import Command, debug_option, run
from .errors import UsageError, exit_codes_help

# What the [serve] extra installs and the service cannot run without.
SERVE_EXTRA = ("starlette", "uvicorn", "python_multipart")


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]}, epilog=exit_codes_help())
@click.option("-m", "--model", "model", required=True, type=click.Path(path_type=Path), help="The .onnx model.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Decode threads and side-by-side model calls (default: the usable cores).")
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(min=1), help="Images per model call.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0, max=10_000),
              help="How long a batch waits for more images while the cores are busy.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images admitted and not yet answered; past it, 503 with Retry-After.")
@click.option("--max-body-mb", default=25.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body; past it, 413.")
@click.option("--decode", default="exact", show_default=True, type=click.Choice(["exact", "fast"]),
              help="exact: the training eval transform bit for bit; fast: JPEGs decoded at a reduced DCT scale first.")
@click.option("--token-file", type=click.Path(path_type=Path),
              help="Require 'Authorization: Bearer TOKEN' (the file's first line) on /v1/* and /metrics.")
@click.option("--cors", metavar="ORIGIN", help="Allow browser pages from ORIGIN (e.g. https://app.example) to call the API.")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="One line per request on stderr.")
@debug_option
def main(model: Path, host: str, port: int, threads: int | None, max_batch: int, max_wait_ms: float, max_queue: int,
         max_body_mb: float, decode: str, token_file: Path | None, cors: str | None, access_log: bool,
         debug: bool) -> None:
    """Serve MODEL over HTTP: POST /v1/classify, GET /v1/model, /healthz, /readyz, /metrics, and a
    web page at /. Replacing MODEL (a rename over it) or SIGHUP swaps the model in; SIGTERM or
    SIGINT lets the requests in flight finish, then exits 0. The [serve] extra missing: exit 2.

    \b
    Examples:
      onnx-serve -m model.onnx
      curl --data-binary @cat.jpg 'http://127.0.0.1:8000/v1/classify?top_k=3'
      onnx-serve -m model.onnx --host 0.0.0.0 --token-file /etc/onnx-serve/token
    """

    def go() -> int:
        missing = [name for name in SERVE_EXTRA if find_spec(name) is None]
        if missing:
            raise UsageError(f"onnx-serve needs the serve extra ({', '.join(missing)} not installed): "
                             "pip install 'alexnet-onnx[serve]'")
        from .serve import ServeConfig, serve

        return serve(ServeConfig(model=model, host=host, port=port, threads=threads, max_batch=max_batch,
                                 max_wait_ms=max_wait_ms, max_queue=max_queue, max_body_mb=max_body_mb,
                                 decode=decode, token_file=token_file, cors=cors, access_log=access_log,
                                 debug=debug))

    run(go, debug=debug)


if __name__ == "__main__":
    main()
