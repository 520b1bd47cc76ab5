"""onnx-bench: its JSON fields and their sanity, the time budget, the pick, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from alexnet_onnx.export.onnx_export import set_contract
from alexnet_onnx.export.options import ExportOptions
from alexnet_onnx.export.pipeline import export_checkpoint
from alexnet_onnx.runtime.bench import MIN_COLD_RUNS, MIN_LATENCY_RUNS, MIN_THROUGHPUT_RUNS, BenchConfig, benchmark
from alexnet_onnx.runtime.bench_cli import main
from alexnet_onnx.runtime.contract import Contract
from alexnet_onnx.runtime.session import available_cores

# A budget every phase overruns at once: each then runs exactly its minimum number of times.
NO_TIME = "0.001"
PASSED = {"passed": True, "gate": "top-1 drop <= 1 pp", "top1_drop_pp": 0.0}
FAILED = {"passed": False, "gate": "top-1 drop <= 1 pp", "top1_drop_pp": 8.3}


def bench(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def with_gate(source: Path, target: Path, gate) -> Path:
    """A copy of `source` whose contract records `gate` under metrics["gate"] (None: no record)."""
    proto = onnx.load(str(source))
    contract = Contract.from_metadata({p.key: p.value for p in proto.metadata_props})
    metrics = {k: v for k, v in contract.metrics.items() if k != "gate"}
    if gate is not None:
        metrics["gate"] = gate
    set_contract(proto, contract.with_(metrics=metrics))
    onnx.save(proto, str(target))
    return target


@pytest.fixture(scope="module")
def variants(trained_run, tiny_folder, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bench") / "m.onnx"
    options = ExportOptions(quantize="all", calib_dir=tiny_folder / "train", calib_size=24,
                            verify_dir=tiny_folder / "test")
    export_checkpoint(trained_run / "best.pt", out, options, log=lambda m: None, measure_speed=False)
    return {"fp32": out, "int8": out.with_name("m.int8.onnx"), "fp16": out.with_name("m.fp16.onnx")}


def test_json_has_every_documented_field_with_sane_values(variants):
    models = [variants["fp32"], variants["int8"]]
    result = bench(*models, "--seconds", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"machine", "seconds_per_model", "input", "models", "pick", "fastest_any_gate"}
    assert data["machine"]["cores"] == available_cores() and data["machine"]["cpu"]
    assert data["input"] == "synthetic" and data["seconds_per_model"] == 2
    cores = available_cores()
    threads = sorted({1, cores})
    expected = {(b, t, 1) for b in (1, 8, 32) for t in threads} | ({(b, 1, cores) for b in (1, 8, 32)} if cores > 1 else set())
    for (variant, model), row in zip([("fp32", models[0]), ("int8", models[1])], data["models"]):
        assert set(row) == {"path", "variant", "arch", "input_size", "gate", "cold_start", "latency", "throughput", "image"}
        assert row["path"] == str(model) and row["variant"] == variant
        assert row["input_size"] == 32 and row["image"] is None
        # export-onnx records each written variant's gate in its contract
        assert row["gate"]["recorded"] and row["gate"]["passed"] and row["gate"]["rule"]
        cold = row["cold_start"]
        assert cold["runs"] >= MIN_COLD_RUNS and 0 < cold["min_s"] <= cold["median_s"] <= cold["max_s"]
        assert 10 < cold["peak_rss_mib"] < 4096 and "onnx-predict" in " ".join(cold["command"])
        lat = row["latency"]
        assert lat["batch"] == 1 and lat["threads"] == cores and lat["runs"] >= MIN_LATENCY_RUNS
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["mean_ms"] > 0
        assert {(r["batch"], r["threads"], r["streams"]) for r in row["throughput"]} == expected
        for r in row["throughput"]:
            assert r["runs"] >= MIN_THROUGHPUT_RUNS * r["streams"] and r["img_per_s"] > 0 and r["median_batch_ms"] > 0
    assert data["pick"]["single_stream"]["path"] in {str(m) for m in models}
    assert data["pick"]["offline"]["path"] in {str(m) for m in models}
    assert data["fastest_any_gate"]["single_stream"]["path"] in {str(m) for m in models}


def test_seconds_bounds_each_phase(variants):
    """Spent at once, the budget leaves each phase its minimum; a larger one buys more runs."""
    def run(seconds: float):
        config = BenchConfig(models=(variants["int8"],), seconds=seconds, threads=(1,), batches=(1,))
        return benchmark(config)[0]

    short, long = run(float(NO_TIME)), run(8.0)
    assert short.cold_start.runs == MIN_COLD_RUNS and short.latency.runs == MIN_LATENCY_RUNS
    assert [r.runs for r in short.throughput] == [MIN_THROUGHPUT_RUNS]
    assert long.latency.runs > 2 * MIN_LATENCY_RUNS and long.throughput[0].runs > 2 * MIN_THROUGHPUT_RUNS


def test_pick_names_the_fastest_model_whose_gate_passed(variants, tmp_path):
    passed = with_gate(variants["fp32"], tmp_path / "passed.onnx", PASSED)
    failed = with_gate(variants["int8"], tmp_path / "failed.onnx", FAILED)
    unrecorded = with_gate(variants["fp16"], tmp_path / "unrecorded.onnx", None)
    args = ["--seconds", NO_TIME, "--threads", "1", "--batch-size", "1"]
    data = json.loads(bench(passed, failed, unrecorded, *args, "--format", "json").stdout)
    assert [m["gate"]["recorded"] for m in data["models"]] == [True, True, False]
    assert [m["gate"]["passed"] for m in data["models"]] == [True, False, False]
    assert data["models"][0]["gate"]["rule"] == PASSED["gate"]
    assert data["pick"]["single_stream"]["path"] == str(passed)
    assert data["pick"]["offline"]["path"] == str(passed) and data["pick"]["offline"]["variant"] == "fp32"
    text = bench(passed, failed, unrecorded, *args).stdout
    assert f"no gate result in the contract of: {unrecorded}" in text
    assert f"fastest here with a passed gate: single stream {passed} (fp32" in text
    none = bench(failed, unrecorded, *args)
    assert none.exit_code == 0 and "none is picked" in none.stdout


def test_image_adds_decode_and_preprocess(variants, tiny_folder):
    image = next((tiny_folder / "test" / "cat").iterdir())
    result = bench(variants["int8"], "--seconds", NO_TIME, "--threads", "1", "--batch-size", "2", "--image", image,
                   "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    row = data["models"][0]["image"]
    assert data["input"] == str(image) and row["path"] == str(image)
    assert row["preprocess_runs"] >= MIN_LATENCY_RUNS and row["preprocess_ms"] > 0
    assert 0 < row["latency"]["p50_ms"] <= row["latency"]["p90_ms"] <= row["latency"]["p99_ms"]
    model_rate = data["models"][0]["throughput"][0]["img_per_s"]
    assert 0 < row["ceiling_img_per_s"] < model_rate  # decoding can only lower the model's own rate
    assert str(image) in data["models"][0]["cold_start"]["command"]


@pytest.mark.parametrize("content", [None, b"", b"not a model at all"])
def test_bad_model_exits_3_with_one_line_before_timing_anything(variants, tmp_path, content):
    bad = tmp_path / "bad.onnx"
    if content is not None:
        bad.write_bytes(content)
    result = bench(variants["int8"], bad)
    assert result.exit_code == 3, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and str(bad) in result.stderr


def test_undecodable_image_exits_3_and_usage_errors_exit_2(variants, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not a jpeg")
    result = bench(variants["int8"], "--image", junk)
    assert result.exit_code == 3 and str(junk) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for args in ([], [variants["int8"], "--seconds", "0"], [variants["int8"], "--image", tmp_path / "none.jpg"],
                 [variants["int8"], "--format", "xml"]):
        result = bench(*args)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.output)


def test_help_lists_options_and_exit_codes():
    proc = subprocess.run([str(Path(sys.executable).parent / "onnx-bench"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--seconds", "--format", "--image", "--threads", "--batch-size", "Exit codes:"):
        assert flag in proc.stdout
