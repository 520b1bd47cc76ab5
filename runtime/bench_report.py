"""onnx-bench's answer: the gate each model's contract records, the fastest model here whose gate
passed, and the figures as a table or one JSON object.

A contract records its variant's parity gate in `metrics["gate"]`: an object with `passed`
(true/false) and, optionally, `gate` (the rule, as the export report words it). A model whose
contract records no gate is measured and listed, never picked.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Optional

from .bench import BenchConfig, Latency, ModelBench, Throughput
from .contract import GATE_METRIC, Contract
from .terminal import printable



@dataclass(frozen=True)
class GateRecord:
    recorded: bool
    passed: bool
    rule: str

    def word(self) -> str:
        return "not recorded" if not self.recorded else "passed" if self.passed else "FAILED"


def gate_record(contract: Contract) -> GateRecord:
    entry = contract.metrics.get(GATE_METRIC)
    if isinstance(entry, dict) and isinstance(entry.get("passed"), bool):
        rule = entry.get("gate")
        return GateRecord(True, entry["passed"], rule if isinstance(rule, str) else "")
    return GateRecord(False, False, "")


def fastest_single_stream(benches: list[ModelBench], *, gated: bool) -> Optional[ModelBench]:
    """Lowest median latency at batch 1; with `gated`, among models whose gate passed."""
    pool = [b for b in benches if gate_record(b.contract).passed or not gated]
    return min(pool, key=lambda b: b.latency.p50_ms, default=None)


def fastest_offline(benches: list[ModelBench], *, gated: bool) -> Optional[tuple[ModelBench, Throughput]]:
    """Highest model-only throughput at any setting; with `gated`, among models whose gate passed."""
    pool = [(b, r) for b in benches if gate_record(b.contract).passed or not gated for r in b.throughput]
    return max(pool, key=lambda pair: pair[1].img_per_s, default=None)


def to_json(benches: list[ModelBench], config: BenchConfig, machine: dict) -> dict:
    """The --format json object (docs/performance.md lists its fields)."""
    def single(bench: Optional[ModelBench]) -> Optional[dict]:
        return None if bench is None else {"path": str(bench.path), "variant": bench.contract.variant,
                                           "p50_ms": bench.latency.p50_ms}

    def offline(pair: Optional[tuple[ModelBench, Throughput]]) -> Optional[dict]:
        return None if pair is None else {"path": str(pair[0].path), "variant": pair[0].contract.variant,
                                          **asdict(pair[1])}

    return {
        "machine": machine,
        "seconds_per_model": config.seconds,
        "input": "synthetic" if config.image is None else str(config.image),
        "models": [model_json(b) for b in benches],
        "pick": {"single_stream": single(fastest_single_stream(benches, gated=True)),
                 "offline": offline(fastest_offline(benches, gated=True))},
        "fastest_any_gate": {"single_stream": single(fastest_single_stream(benches, gated=False)),
                             "offline": offline(fastest_offline(benches, gated=False))},
    }


def model_json(bench: ModelBench) -> dict:
    cold = bench.cold_start
    image = None
    if bench.image is not None:
        image = {**asdict(bench.image), "path": str(bench.image.path)}
    return {
        "path": str(bench.path),
        "variant": bench.contract.variant,
        "arch": bench.contract.arch,
        "input_size": bench.contract.preprocess.crop,
        "gate": asdict(gate_record(bench.contract)),
        "cold_start": {"runs": cold.runs, "median_s": statistics.median(cold.seconds), "min_s": min(cold.seconds),
                       "max_s": max(cold.seconds), "peak_rss_mib": cold.peak_rss_mib, "command": list(cold.command)},
        "latency": {"batch": 1, **asdict(bench.latency)},
        "throughput": [asdict(r) for r in bench.throughput],
        "image": image,
    }


def text_report(benches: list[ModelBench], config: BenchConfig, machine: dict) -> str:
    data = to_json(benches, config, machine)
    source = "synthetic input" if config.image is None else f"--image {printable(str(config.image))}"
    lines = [f"onnx-bench on {printable(machine['cpu'])}, {machine['cores']} core(s), onnxruntime "
             f"{machine['onnxruntime']}; {config.seconds:g} s per model; {source}", ""]
    names = {b.path: printable(str(b.path)) for b in benches}
    width = max(len("model"), *(len(n) for n in names.values()))
    lines.append(f"{'model':<{width}}  {'variant':<7}  {'gate':<12}  {'cold s (runs)':>13}  {'peak MiB':>8}  "
                 f"{'p50 ms':>8}  {'p90 ms':>8}  {'p99 ms':>8}  {'runs':>6}")
    for bench, row in zip(benches, data["models"]):
        cold, lat = row["cold_start"], bench.latency
        start = f"{cold['median_s']:.3f} ({cold['runs']})"
        lines.append(f"{names[bench.path]:<{width}}  {bench.contract.variant:<7}  "
                     f"{gate_record(bench.contract).word():<12}  {start:>13}  "
                     f"{cold['peak_rss_mib']:>8.0f}  {_ms(lat)}  {lat.runs:>6}")
    lines += ["", "cold s: median over fresh onnx-predict processes, process start to first result; peak MiB: the "
              f"largest of their peaks; p50/p90/p99: batch 1, {benches[0].latency.threads} thread(s), model only", "",
              "throughput, model only (streams: calls side by side on one single-threaded session)",
              f"{'model':<{width}}  {'batch':>5}  {'threads':>7}  {'streams':>7}  {'img/s':>9}  {'runs':>6}"]
    for bench in benches:
        for r in bench.throughput:
            lines.append(f"{names[bench.path]:<{width}}  {r.batch:>5}  {r.threads:>7}  {r.streams:>7}  "
                         f"{r.img_per_s:>9.1f}  {r.runs:>6}")
    if config.image is not None:
        lines += ["", "with --image: decode + preprocess (one thread), image to prediction (batch 1), "
                  "end-to-end ceiling"]
        for bench in benches:
            image = bench.image
            lines.append(f"{names[bench.path]:<{width}}  preprocess {image.preprocess_ms:.2f} ms  "
                         f"p50/p90/p99 {_ms(image.latency, sep=' / ')} ms  ceiling {image.ceiling_img_per_s:.1f} img/s")
    lines += ["", *pick_lines(benches)]
    return "\n".join(lines)


def pick_lines(benches: list[ModelBench]) -> list[str]:
    lines = []
    unrecorded = [printable(str(b.path)) for b in benches if not gate_record(b.contract).recorded]
    if unrecorded:
        lines.append(f"no gate result in the contract of: {', '.join(unrecorded)} (measured, never picked)")
    single, offline = fastest_single_stream(benches, gated=True), fastest_offline(benches, gated=True)
    if single is None or offline is None:  # no passed gate: the fastest are named, not picked
        single, offline = fastest_single_stream(benches, gated=False), fastest_offline(benches, gated=False)
        lines.append("no model here has a contract that records a passed gate, so none is picked; fastest "
                     f"regardless: single stream {_single(single)}; offline {_offline(offline)}")
    else:
        lines.append(f"fastest here with a passed gate: single stream {_single(single)}; offline {_offline(offline)}")
    return lines


def _ms(latency: Latency, sep: str = "") -> str:
    if sep:
        return sep.join(f"{v:.2f}" for v in (latency.p50_ms, latency.p90_ms, latency.p99_ms))
    return f"{latency.p50_ms:>8.2f}  {latency.p90_ms:>8.2f}  {latency.p99_ms:>8.2f}"


def _single(bench: ModelBench) -> str:
    return f"{printable(str(bench.path))} ({bench.contract.variant}, p50 {bench.latency.p50_ms:.2f} ms)"


def _offline(pair: tuple[ModelBench, Throughput]) -> str:
    bench, r = pair
    return (f"{printable(str(bench.path))} ({bench.contract.variant}, {r.img_per_s:.1f} img/s at batch {r.batch}, "
            f"{r.threads} thread(s) x {r.streams} stream(s))")
