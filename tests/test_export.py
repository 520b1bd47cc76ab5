"""export-onnx: a self-describing single-file model, the parity gate, and refusals."""

import json
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
    import hashlib

    assert contract.source_checkpoint_sha256 == hashlib.sha256((trained_run / "best.pt").read_bytes()).hexdigest()
    session = ort.InferenceSession(str(out))
    for batch in (1, 5):
        assert session.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 3)


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
    ],
)
def test_export_options_refuse_bad_values_naming_the_valid_ones(field, value, message):
    from alexnet_onnx.export.options import ExportOptions
    from alexnet_onnx.runtime.errors import EXIT_USAGE, UsageError

    with pytest.raises(UsageError) as raised:
        ExportOptions(**{field: value})
    assert message in str(raised.value) and raised.value.exit_code == EXIT_USAGE
