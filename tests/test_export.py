"""export-onnx: a self-describing single-file model, the parity gate, and refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import bad_checkpoint
from alexnet_onnx.export.cli import main
from alexnet_onnx.runtime.contract import Contract


def run_export(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_export_writes_self_describing_model_and_report(trained_run, tmp_path, tiny_folder):
    import onnx
    import onnxruntime as ort

    out, report = tmp_path / "m.onnx", tmp_path / "parity.json"
    result = run_export(trained_run / "best.pt", "-o", out, "--report", report, "--verify-dir", tiny_folder / "test")
    assert result.exit_code == 0, result.output
    assert "fp32: max |logit diff|" in result.stderr and "PASS" in result.stderr
    data = json.loads(report.read_text())["fp32"]
    assert data["max_abs_diff"] <= 1e-4 and data["top1_agreement"] == 1.0 and data["passed"]
    assert data["n_images"] == 12 and data["top1_onnx"] == data["top1_torch"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.external_data for t in model.graph.initializer)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    meta = {p.key: p.value for p in model.metadata_props}
    contract = Contract.from_metadata(meta)
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    assert contract.labels == ("cat", "dog", "owl") and contract.variant == "fp32"
    assert contract.preprocess == Contract.from_metadata(ckpt["contract"]).preprocess
    gate = contract.metrics["gate"]  # the verdict travels with the model (onnx-bench picks by it)
    assert gate["passed"] is True and gate["max_abs_diff"] == data["max_abs_diff"] and gate["gate"] == data["gate"]
    import hashlib

    assert contract.source_checkpoint_sha256 == hashlib.sha256((trained_run / "best.pt").read_bytes()).hexdigest()
    session = ort.InferenceSession(str(out))
    for batch in (1, 5):
        assert session.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 3)
    # The exporter's per-node debugging records (source paths of this machine, FX nodes) stay out.
    from alexnet_onnx.train import evaluation

    raw = out.read_bytes()
    assert str(Path(evaluation.__file__).resolve()).encode() not in raw and b"pkg.torch.onnx" not in raw
    assert not any(node.metadata_props or node.doc_string for node in model.graph.node)


def test_existing_output_needs_force(trained_run, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    result = run_export(trained_run / "best.pt", "-o", out)
    assert result.exit_code == 2 and "--force" in result.stderr and out.read_bytes() == b"precious"
    assert run_export(trained_run / "best.pt", "-o", out, "--force").exit_code == 0
    assert out.stat().st_size > 1000


def test_failed_parity_gate_writes_nothing(trained_run, tmp_path, monkeypatch):
    from alexnet_onnx.export import parity

    monkeypatch.setattr(parity, "FP32_MAX_ABS_DIFF", -1.0)
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    result = run_export(trained_run / "best.pt", "-o", out, "--report", report)
    assert result.exit_code == 3 and "fp32 failed the gate" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".m.onnx*"))
    assert json.loads(report.read_text())["fp32"]["passed"] is False


@pytest.mark.parametrize(
    "kind,message",
    [
        ("truncated", "truncated or corrupt"),
        ("random", "truncated or corrupt"),
        ("lfs", "git-lfs"),
        ("state-dict-only", "not an alexnet-onnx checkpoint"),
        ("nan", "NaN"),
        ("classes", "do not fit"),
        ("malicious", "refused"),
    ],
)
def test_bad_checkpoints_exit_3_with_one_line(kind, message, tmp_path, trained_run):
    path = bad_checkpoint(kind, tmp_path, trained_run)
    result = run_export(path, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 3, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pwned").exists()


def test_missing_checkpoint(tmp_path):
    result = run_export(tmp_path / "nope.pt", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 3 and "not found" in result.stderr


def test_alexnet_224_exports_with_parity(tmp_path, tiny_folder):
    from alexnet_onnx.train.config import TrainConfig
    from alexnet_onnx.train.loop import train

    cfg = TrainConfig(dataset="folder", data_dir=str(tiny_folder), arch="alexnet", epochs=1, batch_size=8,
                      limit_train=6, val_fraction=0.1, out=str(tmp_path / "run"), lr=0.001)
    train(cfg, log=lambda m: None, stop_after_epoch=1)
    report = tmp_path / "r.json"
    result = run_export(tmp_path / "run" / "best.pt", "-o", tmp_path / "a.onnx", "--report", report, "--verify-size", 8)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())["fp32"]
    assert data["max_abs_diff"] <= 1e-4 and data["top1_agreement"] == 1.0 and data["n_images"] > 0
    import onnx

    gemms = [n for n in onnx.load(str(tmp_path / "a.onnx")).graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 3  # the classifier's weights are stored (in, out): no repacking per call
    assert all(a.i == 0 for n in gemms for a in n.attribute if a.name == "transB")


def test_cli_options_are_export_options_defaults_and_choices(tmp_path):
    """export-onnx's options take their defaults, choices and bounds from ExportOptions: a
    literal that drifts from the dataclass fails here."""
    import dataclasses

    import click

    from alexnet_onnx.export.options import CHOICES, MINIMUMS, ExportOptions

    ctx = main.make_context("export-onnx", [str(tmp_path / "c.pt"), "-o", str(tmp_path / "m.onnx")])
    names = [f.name for f in dataclasses.fields(ExportOptions)]
    assert set(names) <= set(ctx.params)
    assert ExportOptions(**{n: ctx.params[n] for n in names}) == ExportOptions()
    params = {p.name: p for p in main.params}
    for name in names:
        kind = params[name].type
        assert tuple(getattr(kind, "choices", ())) == tuple(CHOICES.get(name, ())), name
        if name in MINIMUMS:
            assert isinstance(kind, (click.IntRange, click.FloatRange)) and not kind.min_open, name
            assert kind.min == MINIMUMS[name] and type(kind.min) is type(MINIMUMS[name]), name
        else:
            assert not isinstance(kind, (click.IntRange, click.FloatRange)), name


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("quantize", "int4", "--quantize 'int4' is not valid (choose from none, int8, fp16, all)"),
        ("calib_method", "kl", "--calib-method 'kl' is not valid (choose from minmax, entropy, percentile)"),
        ("calib_size", 0, "--calib-size must be an integer >= 1"),
        ("verify_size", 2.5, "--verify-size must be an integer >= 0"),
        ("max_drop", float("nan"), "--max-drop must be a number >= 0"),
        ("max_drop", -0.5, "--max-drop must be a number >= 0"),
        ("max_class_drop", -1.0, "--max-class-drop must be a number >= 0"),
        ("temperature", "0", "--temperature '0' is not valid (choose from fit, none, or a number from 0.001 to 1000)"),
        ("temperature", "nan", "--temperature 'nan' is not valid"),
        ("accept_score", "entropy", "--accept-score 'entropy' is not valid (choose from max_softmax, energy)"),
    ],
)
def test_export_options_refuse_bad_values_naming_the_valid_ones(field, value, message):
    from alexnet_onnx.export.options import ExportOptions
    from alexnet_onnx.runtime.errors import EXIT_USAGE, UsageError

    with pytest.raises(UsageError) as raised:
        ExportOptions(**{field: value})
    assert message in str(raised.value) and raised.value.exit_code == EXIT_USAGE


def graph_bytes(path) -> bytes:
    import onnx

    return onnx.load(str(path)).graph.SerializeToString()


def val_images(checkpoint):
    """The checkpoint's own validation images (what export fits the scores on)."""
    from alexnet_onnx.train.config import TrainConfig
    from alexnet_onnx.train.data import load_splits

    cfg = TrainConfig.from_dict(torch.load(checkpoint, weights_only=True)["config"])
    splits = load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, limit_train=None, seed=cfg.seed,
                         download=False)
    return [splits.val.source.image(i) for i in splits.val.indices]


def test_export_stores_fitted_scores_and_leaves_the_graph_alone(trained_run, tmp_path):
    from alexnet_onnx.runtime import Predictor

    fitted, plain, report = tmp_path / "t.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    result = run_export(trained_run / "best.pt", "-o", fitted, "--report", report)
    assert result.exit_code == 0, result.output
    assert run_export(trained_run / "best.pt", "-o", plain, "--temperature", "none").exit_code == 0
    assert graph_bytes(fitted) == graph_bytes(plain)  # logits stay logits
    with_t, without = Predictor(fitted), Predictor(plain)
    assert with_t.contract.contract_version == "2" and without.contract.temperature == 1.0
    data = json.loads(report.read_text())
    scores = data["fp32"]["scores"]
    # Fitted on the validation split, checked on the test split, never the other way round.
    assert "seeded 0.25 of train" in data["scores_fit_images"] and "(test)" in data["scores_check_images"]
    assert scores["temperature"] == with_t.contract.temperature != 1.0
    assert scores["accept_threshold"] == with_t.contract.accept_threshold is not None
    assert scores["top1_after"] == scores["top1_before"] and scores["n_check"] == 12
    assert scores["nll_before"] > 0 and scores["ece_before"] >= 0 and scores["ece_after"] >= 0
    assert 0 < scores["ece_floor"] < 1  # 12 check images: sampling noise alone is large
    # The documented acceptance on its own validation data: at least 95% accepted.
    val = val_images(trained_run / "best.pt")
    accepted = [p.accepted for p in with_t.predict(val)]
    assert np.mean(accepted) >= 0.95 and scores["accepted_fit"] >= 0.95
    # Temperature changes scores, never labels.
    for a, b in zip(with_t.predict(val, top_k=3), without.predict(val, top_k=3)):
        assert [label for label, _ in a.top_k] == [label for label, _ in b.top_k]
    markdown = (tmp_path / "t.report.md").read_text()
    assert "## Scores" in markdown and "## Per class" in markdown and "t.reliability.png" in markdown
    assert (tmp_path / "t.reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ECE before" in result.stderr and "NLL after" in result.stderr


@pytest.mark.parametrize("temperature,stored", [("fit", 1.0), ("2.5", 2.5)])
def test_without_a_validation_split_the_scores_fall_back_with_a_warning(trained_run, tmp_path, temperature, stored):
    """A checkpoint trained on all of train/ has only test/ beside it: the test split is never fitted on."""
    from alexnet_onnx.runtime import Predictor

    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    ckpt["config"]["val_fraction"] = 0.0
    torch.save(ckpt, tmp_path / "noval.pt")
    out = tmp_path / "m.onnx"
    result = run_export(tmp_path / "noval.pt", "-o", out, "--temperature", temperature)
    assert result.exit_code == 0, result.output
    assert "warning: no validation images" in result.stderr and "test split is never used" in result.stderr
    contract = Predictor(out).contract
    assert contract.temperature == stored and contract.accept_threshold is None


def test_a_bad_temperature_is_a_usage_error(trained_run, tmp_path):
    result = run_export(trained_run / "best.pt", "-o", tmp_path / "m.onnx", "--temperature", "warm")
    assert result.exit_code == 2 and "--temperature 'warm' is not valid (choose from fit, none, or a number" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
