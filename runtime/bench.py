"""onnx-bench's measurements of models on this machine, each bounded by a share of a time budget:
cold start (runtime/bench_cold.py), single-stream latency at batch 1, decode + preprocess of an
image (with one), and model-only throughput at several batch sizes, thread counts and streams.

Timed as benchmarks/ time them, so the figures cross-check: warm-up calls, then perf_counter
around each call on seeded standard-normal input; latency on a session with every usable core
(benchmarks/variant_latency.py), throughput as the batch over the median call
(benchmarks/predict_throughput.py's model-only rate). Several streams are that many calls side by
side on one single-threaded session, as onnx-predict runs folders; their rate is every image over
the span from the first start to the last finish.
"""

from __future__ import annotations

import math
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .bench_cold import ColdStart, cold_start
from .contract import Contract
from .errors import DataError, ImageError, UsageError
from .predictor import Predictor, prepare
from .session import available_cores

DEFAULT_SECONDS = 20.0  # per model: a quick answer
DEFAULT_BATCHES = (1, 8, 32)
FORMATS = ("table", "json")
# Shares of each model's budget; throughput's is split evenly between its settings. Each phase
# gets its share of the time still left, so one that runs over shortens the ones after it.
WEIGHTS = {"cold_start": 0.35, "latency": 0.15, "image": 0.1, "throughput": 0.4}
# Every phase runs at least this often, past its share if need be: fewer runs give no median.
MIN_COLD_RUNS = 3
MIN_LATENCY_RUNS = 20
MIN_THROUGHPUT_RUNS = 2
WARMUP_CALLS = 2
SEED = 0
MS = 1000.0

OnPhase = Callable[[int, str], None]


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[Path, ...]
    seconds: float = DEFAULT_SECONDS  # per model
    image: Optional[Path] = None  # None: synthetic input only
    threads: tuple[int, ...] = ()  # empty: 1 and every usable core
    batches: tuple[int, ...] = DEFAULT_BATCHES
    fmt: str = "table"

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("no MODEL given")
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise UsageError(f"--seconds must be a positive number, got {self.seconds!r}")
        if not self.batches or min(self.batches) < 1 or (self.threads and min(self.threads) < 1):
            raise UsageError("--batch-size and --threads must be positive integers")
        if self.fmt not in FORMATS:
            raise UsageError(f"--format {self.fmt!r} is not valid (choose from {', '.join(FORMATS)})")

    def thread_counts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.threads or (1, available_cores()))))

    def settings(self) -> list[tuple[int, int, int]]:
        """(batch, threads, streams) of each throughput run: every thread count in one stream,
        and, with more than one core in play, that many streams of one thread each."""
        counts = self.thread_counts()
        found = [(b, t, 1) for b in sorted(set(self.batches)) for t in counts]
        if max(counts) > 1:
            found += [(b, 1, max(counts)) for b in sorted(set(self.batches))]
        return found

    def steps(self) -> int:
        """Phases per model, for the progress line."""
        return 2 + (self.image is not None) + len(self.settings())


@dataclass(frozen=True)
class Latency:
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float], threads: int) -> "Latency":
        p50, p90, p99 = (MS * float(v) for v in np.percentile(seconds, [50, 90, 99]))
        return cls(threads, len(seconds), p50, p90, p99, MS * float(np.mean(seconds)))


@dataclass(frozen=True)
class Throughput:
    batch: int
    threads: int
    streams: int
    runs: int
    img_per_s: float
    median_batch_ms: float


@dataclass(frozen=True)
class ImageBench:
    """With --image: decode + preprocess alone (one thread), and image-to-prediction latency."""

    path: Path
    preprocess_runs: int
    preprocess_ms: float
    latency: Latency
    ceiling_img_per_s: float  # end to end, as benchmarks/predict_throughput.py bounds it


@dataclass(frozen=True)
class ModelBench:
    path: Path
    contract: Contract
    cold_start: ColdStart
    latency: Latency
    throughput: tuple[Throughput, ...]
    image: Optional[ImageBench] = None


class Budget:
    """One model's time: each phase, when it starts, gets its weight's share of what is left."""

    def __init__(self, seconds: float, weights: dict) -> None:
        self.end = time.perf_counter() + seconds
        self.weights = dict(weights)

    def deadline(self, phase) -> float:
        now = time.perf_counter()
        weight = self.weights.pop(phase)
        return now + max(0.0, self.end - now) * weight / (weight + sum(self.weights.values()))


def benchmark(config: BenchConfig, on_phase: OnPhase = lambda done, status: None) -> list[ModelBench]:
    """Every model of `config`, one after another. Each model (and --image) is checked before
    anything is timed, so a bad one ends the run at once (ModelError, exit 3)."""
    contracts = [check_model(path, config.image) for path in config.models]
    done = 0

    def phase(status: str) -> None:
        nonlocal done
        on_phase(done, status)
        done += 1

    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as tmp:
        return [bench_model(path, contract, config, Path(tmp), phase)
                for path, contract in zip(config.models, contracts)]


def check_model(path: Path, image: Optional[Path]) -> Contract:
    """The model's contract, once onnx-predict would accept the model (its errors, exit 3);
    `image` must decode under the model's preprocessing (else DataError, exit 3)."""
    contract = Predictor(path, threads=1, few_images=True).contract
    if image is not None:
        try:
            prepare(image, contract.preprocess)
        except ImageError as exc:
            raise DataError(f"--image {exc}") from None
    return contract


def bench_model(path: Path, contract: Contract, config: BenchConfig, tmp: Path,
                phase: Callable[[str], None]) -> ModelBench:
    settings = config.settings()
    weights = {key: w for key, w in WEIGHTS.items() if key != "throughput" and (key != "image" or config.image)}
    weights.update({s: WEIGHTS["throughput"] / len(settings) for s in settings})
    budget = Budget(config.seconds, weights)
    name = path.name
    phase(f"{name}: cold start")
    sample = config.image or synthetic_image(contract.preprocess.crop, tmp)
    cold = cold_start(path, sample, budget.deadline("cold_start"), min_runs=MIN_COLD_RUNS)
    predictors: dict[int, Predictor] = {}

    def predictor(threads: int) -> Predictor:
        if threads not in predictors:
            predictors[threads] = Predictor(path, threads=threads)
        return predictors[threads]

    top = max(config.thread_counts())
    phase(f"{name}: latency")
    main, one = predictor(top), synthetic_batch(contract.preprocess.crop, 1)
    latency = Latency.of(timed(lambda: main.logits(one), budget.deadline("latency"), MIN_LATENCY_RUNS), top)
    rates = []
    for batch, threads, streams in settings:
        phase(f"{name}: batch {batch}, {threads} thread(s) x {streams} stream(s)")
        rates.append(throughput(predictor(threads), threads, batch, streams, budget.deadline((batch, threads, streams))))
    image = None
    if config.image is not None:
        phase(f"{name}: --image")
        image = bench_image(main, config.image, budget.deadline("image"), rates, top)
    return ModelBench(path, contract, cold, latency, tuple(rates), image)


def bench_image(predictor: Predictor, path: Path, deadline: float, rates: list[Throughput], threads: int) -> ImageBench:
    """Half the time on decode + preprocess alone, half on image-to-prediction at batch 1. The
    ceiling: 1 / (model s/img + preprocess s/img / cores), the model rate being the largest
    batch's in one stream of `threads`, as benchmarks/predict_throughput.py computes it."""
    halfway = time.perf_counter() + (deadline - time.perf_counter()) / 2
    prep = timed(lambda: predictor.preprocess(path), halfway, MIN_LATENCY_RUNS)
    latency = Latency.of(timed(lambda: predictor.predict([path]), deadline, MIN_LATENCY_RUNS), threads)
    model = max((r for r in rates if r.threads == threads and r.streams == 1), key=lambda r: r.batch)
    prep_s = float(np.median(prep))
    ceiling = 1.0 / (1.0 / model.img_per_s + prep_s / available_cores())
    return ImageBench(path, len(prep), MS * prep_s, latency, ceiling)


def timed(call: Callable[[], object], deadline: float, min_runs: int, warmup: int = WARMUP_CALLS) -> list[float]:
    """Seconds of each call of `call` after `warmup` untimed ones: at least `min_runs`, then more
    until `deadline` (time.perf_counter())."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def throughput(predictor: Predictor, threads: int, batch: int, streams: int, deadline: float) -> Throughput:
    x = synthetic_batch(predictor.contract.preprocess.crop, batch)
    if streams == 1:
        times = timed(lambda: predictor.logits(x), deadline, MIN_THROUGHPUT_RUNS)
        median = float(np.median(times))
        return Throughput(batch, threads, 1, len(times), batch / median, MS * median)
    barrier = threading.Barrier(streams)

    def stream() -> tuple[float, float, list[float]]:
        try:
            for _ in range(WARMUP_CALLS):
                predictor.logits(x)
        except BaseException:
            barrier.abort()  # the others stop waiting; this stream's error is the one raised
            raise
        barrier.wait()
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across threads
        times = timed(lambda: predictor.logits(x), deadline, MIN_THROUGHPUT_RUNS, warmup=0)
        return start, time.perf_counter(), times

    with ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(stream) for _ in range(streams)]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    spans = [f.result() for f in futures]
    runs = sum(len(times) for _, _, times in spans)
    elapsed = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    median = float(np.median([t for _, _, times in spans for t in times]))
    return Throughput(batch, threads, streams, runs, batch * runs / elapsed, MS * median)


def synthetic_batch(crop: int, batch: int) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((batch, 3, crop, crop)).astype(np.float32)


def synthetic_image(crop: int, folder: Path) -> Path:
    """A seeded noise PNG of the model's input size, for the cold-start runs."""
    from PIL import Image

    path = folder / f"synthetic-{crop}.png"
    if not path.exists():
        pixels = np.random.default_rng(SEED).integers(0, 256, (crop, crop, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(path)
    return path


def machine() -> dict:
    """What the figures were measured on."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    return {"cpu": cpu, "cores": available_cores(), "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}
