"""`onnx-predict`: classify images with an exported model, no PyTorch needed."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import click

from .cliutil import Command, debug_option, run
from .errors import EXIT_OK, EXIT_SOME_FAILED, UsageError, exit_codes_help
from .progress import Progress
from .terminal import printable

# Up to this many plain files, start-up time matters more than per-image speed.
FEW_IMAGES = 4


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]},
               epilog=exit_codes_help(EXIT_SOME_FAILED))
@click.option("-m", "--model", "model", required=True, type=click.Path(path_type=Path), help="The .onnx model.")
@click.argument("paths", nargs=-1, type=click.Path())  # str: a URI keeps its "//"
@click.option("--top-k", type=click.IntRange(min=1),
              help="Labels per image [default: 1]. With --eval: also report top-K accuracy (top-1 and top-5 "
                   "always are).")
@click.option("--format", "fmt", default="text", show_default=True, type=click.Choice(["text", "json", "csv"]),
              help="With --eval: json is one object {top1, top5, [topK,] n, failed, per_class}; csv is a header "
                   "(scope,label,n,failed,top1,top5[,topK]), a row 'all' for every image, then a row 'class' "
                   "per label (empty accuracies where none of its images could be read).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Threads (default: the usable cores).")
@click.option("--decode", default="exact", show_default=True, type=click.Choice(["exact", "fast"]),
              help="exact: the training eval transform bit for bit; fast: JPEGs decoded at a reduced DCT "
                   "scale first (camera photos several times faster; see docs/runtime.md).")
@click.option("--min-confidence", type=click.FloatRange(0, 1), metavar="P",
              help="Accept an image as one of the model's classes when its calibrated top score is at least P "
                   "(a probability, 0..1), instead of the model's own rule. An image not accepted prints as "
                   "'unknown (best guess: LABEL SCORE)' and its row gets accepted false; it is not an error.")
@click.option("--accept-all", is_flag=True, help="Accept every image: never 'unknown' (rows: accepted true).")
@click.option("--eval", "eval_dir", type=click.Path(path_type=Path), help="Evaluate on an ImageFolder DIR instead.")
@click.option("--follow-links", is_flag=True,
              help="Walk into links to folders found inside the given folders (and a glob's **); without it they "
                   "are skipped, so a walk never leaves the folders given. Each real folder is walked once.")
@click.option("--ray", "ray_address", metavar="ADDRESS|auto|local",
              help="Run as a Ray Data pipeline: on the cluster at ADDRESS, the running one (auto), or a "
                   "private one on this machine (local). Needs 'alexnet-onnx[cluster]'.")
@click.option("--output", type=click.Path(path_type=Path),
              help="With --ray: write the rows (--format json's fields) to OUT.parquet or OUT.jsonl; "
                   "a rerun with the same OUT classifies only what it lacks (it must use OUT's model, --top-k "
                   "and --decode).")
@click.option("--overwrite", is_flag=True,
              help="With --ray --output: start OUT afresh instead of continuing it; the old OUT stays until "
                   "the new run has finished.")
@debug_option
def main(
    model: Path,
    paths: tuple[str, ...],
    top_k: int | None,
    fmt: str,
    batch_size: int,
    threads: int | None,
    decode: str,
    min_confidence: float | None,
    accept_all: bool,
    eval_dir: Path | None,
    ray_address: str | None,
    output: Path | None,
    overwrite: bool,
    debug: bool,
    follow_links: bool,
) -> None:
    """Classify images (files, directories, globs) with MODEL, or evaluate it with --eval DIR.

    \b
    Examples:
      onnx-predict -m model.onnx cat.jpg photos/ 'shots/**/*.png'
      onnx-predict -m model.onnx --format json --top-k 3 photos/ > preds.jsonl
      onnx-predict -m model.onnx --eval data/test --format json
      onnx-predict -m model.onnx --ray auto /shared/photos s3://bucket/photos --output preds.parquet
    """

    def go() -> int:
        if eval_dir is not None and paths:
            raise UsageError("give either PATHs or --eval DIR, not both")
        if eval_dir is None and not paths:
            raise UsageError("no PATH given (images, directories or globs), and no --eval DIR")
        if min_confidence is not None and accept_all:
            raise UsageError("give either --min-confidence P or --accept-all, not both")
        if ray_address is not None and (min_confidence is not None or accept_all):
            raise UsageError("--min-confidence and --accept-all are not available with --ray (its rows use the "
                             "model's own rule)")
        if output is not None and ray_address is None:
            raise UsageError("--output goes with --ray (without it the results go to standard output)")
        if overwrite and output is None:
            raise UsageError("--overwrite goes with --ray and --output (it starts OUT afresh)")
        if ray_address is not None:
            if eval_dir is not None and top_k is not None:
                raise UsageError("--top-k with --eval is not available with --ray (it reports top-1 and top-5)")
            return _cluster(model, paths, eval_dir, ray_address, output, overwrite, fmt, top_k or 1, batch_size, decode,
                            threads, debug, follow_links)
        from .predictor import Predictor
        from .session import available_cores

        few = eval_dir is None and len(paths) <= FEW_IMAGES and all(_is_file(Path(p)) for p in paths)
        workers = threads or available_cores()
        # Folders: `workers` single-threaded model calls side by side with the decoders (classify).
        # The session is built while the first images decode; a model defect still ends the run
        # (exit 3) before any result is written, since results wait for the session.
        predictor = Predictor(model, threads=threads if few else 1, few_images=few, decode=decode, background=True,
                              min_confidence=min_confidence, accept_all=accept_all)
        if eval_dir is not None:
            return _evaluate(predictor, eval_dir, fmt, top_k, batch_size, workers, follow_links)
        return _predict(predictor, paths, fmt, top_k or 1, batch_size, workers, follow_links)

    run(go, debug=debug)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _predict(predictor, paths, fmt: str, top_k: int, batch_size: int, workers: int, follow_links: bool) -> int:
    from .classify import Writer, classify
    from .inputs import Skipped, iter_inputs

    writer = Writer(fmt, sys.stdout, sys.stderr)
    failed = done = 0
    start = time.monotonic()
    skipped = Skipped()
    # Progress only where a person watches stderr while the results go to a file or a pipe.
    with Progress("images", enabled=not sys.stdout.isatty()) as progress:
        inputs = iter_inputs(paths, skipped, follow_links=follow_links)
        for result in classify(predictor, inputs, batch_size=batch_size, top_k=top_k, workers=workers):
            failed += result.error is not None
            done += 1
            writer.write(result)
            progress.update(done, f"{done / (time.monotonic() - start):.0f} img/s, {failed} failed")
    sys.stdout.flush()
    if skipped.files:
        click.echo(f"note: {skipped.files} file(s) in the folders have no image suffix and were skipped", err=True)
    if skipped.links:
        click.echo(f"note: {skipped.links} link(s) to folders were not followed (--follow-links follows them)", err=True)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _evaluate(predictor, root: Path, fmt: str, top_k: int | None, batch_size: int, workers: int,
              follow_links: bool) -> int:
    from .evaluate import evaluate

    def on_error(message: str) -> None:
        click.echo(f"error: {printable(message)}", err=True)

    with Progress("images") as progress:
        report = evaluate(predictor, root, batch_size=batch_size, workers=workers, on_error=on_error,
                          on_progress=progress.update, top_k=top_k, follow_links=follow_links)
    return _report(report, fmt)


def _report(report, fmt: str) -> int:
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), allow_nan=False))
    elif fmt == "csv":
        out = io.StringIO()
        rows = csv.writer(out, lineterminator="\n")
        for row in report.csv_rows():
            rows.writerow([printable(cell) if isinstance(cell, str) else cell for cell in row])
        click.echo(out.getvalue(), nl=False)
    else:
        click.echo(f"{_tops(report.ks, report.to_dict())}  n {report.n}  failed {report.failed}")
        for label, stats in report.per_class.items():
            click.echo(f"  {printable(label):<20} {_tops(report.ks, stats)}  n {stats['n']}  failed {stats['failed']}")
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


def _tops(ks: tuple[int, ...], stats: dict) -> str:
    """The top<k> fields of a report or a class as "top-1 0.5000  top-5 0.9000" ("-" for none)."""
    return "  ".join(f"top-{k} " + ("-" if stats[f"top{k}"] is None else f"{stats[f'top{k}']:.4f}") for k in ks)


def _cluster(model: Path, paths, eval_dir: Path | None, address: str, output: Path | None, overwrite: bool, fmt: str,
             top_k: int, batch_size: int, decode: str, threads: int | None, debug: bool, follow_links: bool) -> int:
    """`--ray`: the model (exit 3) and OUT's settings (exit 2) are checked here, before the cluster
    does any work; --eval scores the rows as local --eval does (runtime.evaluate.score)."""
    import tempfile
    from importlib.util import find_spec

    from .predictor import Predictor

    if output is None and eval_dir is None:
        raise UsageError("--ray needs --output OUT.parquet or OUT.jsonl for the results")
    if find_spec("ray") is None or find_spec("pyarrow") is None:
        raise UsageError("--ray needs Ray Data: pip install 'alexnet-onnx[cluster]'")
    from . import cluster
    from .cluster_sources import Source, list_sources
    from .cluster_settings import RunSettings
    from .cluster_store import RowStore, unstorable_path
    from .evaluate import labeled_images, labels_to_rank, score
    from .rows import result_from_row

    with tempfile.TemporaryDirectory(prefix="alexnet-onnx-eval-") as tmp:
        store = RowStore(output or Path(tmp, "rows.jsonl"))
        predictor = Predictor(model)
        if eval_dir is not None:
            top_k = labels_to_rank(predictor.labels)
        store.open(RunSettings.of(model, top_k=top_k, decode=decode), overwrite=overwrite)
        labeled: dict[str, int] = {}
        if eval_dir is not None:
            labeled = {str(p): target for p, target in labeled_images(eval_dir, predictor.labels, follow_links)}
            sources, missing = [Source(p, os.path.abspath(p)) for p in labeled], []
        else:
            sources, missing = list_sources(paths, lambda n: click.echo(
                f"note: {n} file(s) in the folders have no image suffix and were skipped", err=True), follow_links)
        unstorable = unstorable_path(s.path for s in sources) if store.parquet else None
        if unstorable is not None:
            raise UsageError(f"{printable(unstorable)}: a file name that is not UTF-8, which Parquet cannot hold; "
                             "use --output OUT.jsonl")
        with cluster.ray_output_silenced(not debug):
            cluster.connect(address, threads)
            try:
                with Progress("images", total=len(sources) + len(missing)) as progress:
                    summary = cluster.run(model, predictor, sources, missing, store, top_k=top_k, decode=decode,
                                          batch_size=batch_size, on_progress=lambda s: progress.update(
                                              s.classified + s.already,
                                              f"{s.classified / max(s.seconds, 1e-9):.0f} img/s, {s.failed} failed"))
            finally:
                cluster.disconnect()
        click.echo(f"{summary.classified} classified, {summary.already} already in "
                   f"{printable(str(store.path))}, {summary.failed} failed, {summary.seconds:.1f} s; ran on {summary.nodes} "
                   f"node(s) (decoding on {summary.decode_nodes}, classifying on {summary.classify_nodes})", err=True)
        # OUT is streamed, not held: it may hold far more rows than this run named.
        if eval_dir is None:
            wanted = {s.path for s in sources} | {str(r.path) for r in missing}
            return EXIT_SOME_FAILED if any("error" in row for row in store.rows(wanted)) else EXIT_OK
        rows = store.rows(set(labeled))
        report = score(((labeled[row["path"]], result_from_row(row, predictor.labels)) for row in rows),
                       predictor.labels, on_error=lambda message: click.echo(f"error: {printable(message)}", err=True))
        if report.n + report.failed != len(labeled):
            raise RuntimeError(f"{len(labeled) - report.n - report.failed} of the images have no row in {store.path}")
        return _report(report, fmt)


def entry() -> None:
    """The `onnx-predict` console script: `main`, then an immediate exit once the output is
    flushed. Tearing down onnxruntime and the interpreter changes nothing the user sees and costs
    ~35 ms, a tenth of a one-image run."""
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:  # pragma: no cover - click always exits in standalone mode
        code = EXIT_OK
    if code is None:
        code = EXIT_OK
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = EXIT_SOME_FAILED
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`| head`): what it read was all it wanted
        pass
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
