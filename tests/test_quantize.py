"""Quantized variants: int8 (static, calibrated) and fp16 from the CLI, their gate and report."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from alexnet_onnx.export.cli import main
from alexnet_onnx.export.parity import VerifySet, compare
from alexnet_onnx.runtime import Predictor


def run_export(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_quantize_all_writes_every_variant_with_contract(trained_run, tiny_folder, tmp_path):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    result = run_export(trained_run / "best.pt", "-o", out, "--quantize", "all", "--report", report,
                        "--verify-dir", tiny_folder / "test", "--calib-dir", tiny_folder / "train", "--calib-size", 24)
    assert result.exit_code == 0, result.output
    paths = {"fp32": out, "int8": tmp_path / "m.int8.onnx", "fp16": tmp_path / "m.fp16.onnx"}
    data = json.loads(report.read_text())
    fp32 = Predictor(out)
    images = sorted((tiny_folder / "test").glob("*/*.png"))
    reference = [p.label for p in fp32.predict(images)]
    for variant, path in paths.items():
        row = data[variant]
        assert row["passed"] and row["written_to"] == str(path)
        assert row["latency_b1_ms"] > 0 and row["latency_b32_ms"] > 0 and row["size_mb"] > 0
        assert 0 <= row["top1_agreement"] <= 1 and row["n_images"] == 12
        p = Predictor(path)
        assert p.contract.variant == variant and p.contract.labels == fp32.contract.labels
        assert p.contract.preprocess == fp32.contract.preprocess
        labels = [x.label for x in p.predict(images)]
        assert np.mean([a == b for a, b in zip(labels, reference)]) >= 0.9
    assert data["int8"]["size_mb"] < data["fp32"]["size_mb"] / 3  # int8 weights
    assert data["fp16"]["size_mb"] < data["fp32"]["size_mb"] * 0.6
    table = (tmp_path / "m.report.md").read_text()
    assert "| int8 |" in table and "| fp16 |" in table and "latency" in table
    assert "b1 ms" in result.stderr  # the table is printed


def test_int8_graph_is_quantized_qdq(trained_run, tiny_folder, tmp_path):
    import onnx

    out = tmp_path / "q.onnx"
    result = run_export(trained_run / "best.pt", "-o", out, "--quantize", "int8", "--calib-dir", tiny_folder / "train",
                        "--calib-size", 8, "--calib-method", "percentile", "--verify-dir", tiny_folder / "test")
    assert result.exit_code == 0, result.output
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def broken_int8(fp32: bytes, calibration, method="minmax") -> bytes:
    """Stands in for a quantizer that ruins the model: every input gets class 0."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(fp32)
    last = [t for t in model.graph.initializer if t.dims and len(t.dims) == 1 and t.dims[0] == 3][-1]
    bias = numpy_helper.to_array(last).copy()
    bias[0] += 1e4
    last.CopyFrom(numpy_helper.from_array(bias, last.name))
    return model.SerializeToString()


def test_variant_over_max_drop_is_refused_and_not_written(trained_run, tiny_folder, tmp_path, monkeypatch):
    from alexnet_onnx.export import quantize

    monkeypatch.setattr(quantize, "quantize_int8", broken_int8)
    out = tmp_path / "m.onnx"
    args = [trained_run / "best.pt", "-o", out, "--quantize", "int8", "--calib-dir", tiny_folder / "train",
            "--verify-dir", tiny_folder / "test"]
    result = run_export(*args)
    assert result.exit_code == 3 and "int8 failed the gate" in result.stderr and "--max-drop" in result.stderr
    assert not out.exists()
    accepted = run_export(*args, "--max-drop", "100")
    assert accepted.exit_code == 0 and out.exists()


def test_quantize_all_keeps_the_passing_variants(trained_run, tiny_folder, tmp_path, monkeypatch):
    from alexnet_onnx.export import quantize

    monkeypatch.setattr(quantize, "quantize_int8", broken_int8)
    out = tmp_path / "m.onnx"
    result = run_export(trained_run / "best.pt", "-o", out, "--quantize", "all", "--calib-dir", tiny_folder / "train",
                        "--verify-dir", tiny_folder / "test")
    assert result.exit_code == 3
    assert out.exists() and (tmp_path / "m.fp16.onnx").exists() and not (tmp_path / "m.int8.onnx").exists()


def test_int8_without_calibration_images_says_so(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    ckpt["config"]["data_dir"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    result = run_export(tmp_path / "moved.pt", "-o", tmp_path / "m.onnx", "--quantize", "int8")
    assert result.exit_code == 3 and "--calib-dir" in result.stderr


@pytest.mark.parametrize(
    "ref_correct,cand_correct,max_drop,passed",
    [(10, 10, 1.0, True), (10, 9, 1.0, False), (10, 9, 10.0, True), (9, 10, 0.0, True)],
)
def test_reduced_precision_gate(ref_correct, cand_correct, max_drop, passed):
    labels = np.zeros(10, np.int64)
    def logits(correct):
        z = np.zeros((10, 2), np.float32)
        z[:correct, 0] = 1
        z[correct:, 1] = 1
        return z
    verify = VerifySet(np.zeros((0, 3, 4, 4), np.float32), np.zeros((10, 3, 4, 4), np.float32), labels, "test")
    empty = np.zeros((0, 2), np.float32)
    report = compare("int8", {"random": empty, "images": logits(ref_correct)},
                     {"random": empty, "images": logits(cand_correct)}, verify, max_drop)
    assert report.passed is passed
    assert report.top1_drop_pp == pytest.approx(10.0 * (ref_correct - cand_correct))


def test_calibration_dir_without_images_exits_3(trained_run, tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "broken.jpg").write_bytes(b"not an image")
    result = run_export(trained_run / "best.pt", "-o", tmp_path / "m.onnx", "--quantize", "int8", "--calib-dir", tmp_path / "calib")
    assert result.exit_code == 3 and "calibration" in result.stderr and not (tmp_path / "m.onnx").exists()


def test_each_calibration_method_calibrates_differently(exported_model, tiny_folder):
    """minmax, entropy and percentile must each reach onnxruntime's calibrator with what it needs:
    three methods, three different sets of activation scales (with onnxruntime's default bin counts
    entropy's search has one candidate and gives minmax's scales)."""
    import onnx
    from onnx import numpy_helper

    from alexnet_onnx.export.options import CALIBRATION_METHODS
    from alexnet_onnx.export.quantize import quantize_int8

    p = Predictor(exported_model)
    calib = np.stack([p.preprocess(f) for f in sorted((tiny_folder / "train").glob("*/*.png"))[:24]])
    scales = {}
    for method in CALIBRATION_METHODS:
        model = onnx.load_from_string(quantize_int8(exported_model.read_bytes(), calib, method))
        scales[method] = tuple(float(numpy_helper.to_array(t)) for t in model.graph.initializer
                               if t.name.endswith("_scale") and not t.dims)
    assert len(set(scales.values())) == len(CALIBRATION_METHODS), scales


def test_class_effects_by_hand():
    from alexnet_onnx.export.per_class import class_effects

    def onehot(indices):
        return np.eye(3, dtype=np.float32)[indices]

    labels = np.array([0, 0, 1, 1, 2, 2])
    reference = onehot([0, 0, 1, 1, 2, 0])  # torch: 5 of 6 right, class 2 half right
    candidate = onehot([0, 1, 1, 1, 2, 2])  # the variant loses a cat and fixes an owl
    effects = class_effects(reference, candidate, labels, ["cat", "dog", "owl"])
    assert effects.per_class["cat"] == {"n": 2, "top1_torch": 1.0, "top1_onnx": 0.5, "drop_pp": 50.0, "moved": 1}
    assert effects.per_class["owl"]["drop_pp"] == -50.0 and effects.per_class["dog"]["moved"] == 0
    assert effects.worst_class == "cat" and effects.worst_drop_pp == 50.0
    assert effects.most_moved == (("cat", 1), ("owl", 1))
    # Without labels, images are grouped by PyTorch's prediction and a changed one counts as lost.
    unlabeled = class_effects(reference, candidate, None, ["cat", "dog", "owl"])
    assert unlabeled.per_class["cat"]["n"] == 3 and unlabeled.per_class["cat"]["top1_torch"] is None
    assert unlabeled.worst_class == "cat" and unlabeled.worst_drop_pp == pytest.approx(200 / 3)


def test_max_class_drop_refuses_a_variant_that_loses_one_class(trained_run, tiny_folder, tmp_path, monkeypatch):
    from alexnet_onnx.export import quantize

    monkeypatch.setattr(quantize, "quantize_int8", broken_int8)  # every image becomes "cat"
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    args = [trained_run / "best.pt", "-o", out, "--quantize", "int8", "--calib-dir", tiny_folder / "train",
            "--verify-dir", tiny_folder / "test", "--max-drop", "100", "--report", report]
    result = run_export(*args, "--max-class-drop", "5")
    assert result.exit_code == 3 and "worst class <= 5 pp" in result.stderr and "--max-class-drop" in result.stderr
    assert not out.exists()
    row = json.loads(report.read_text())["int8"]
    classes = row["per_class"]
    assert sum(c["n"] for c in classes.values()) == row["n_images"] == 12
    assert classes["cat"]["top1_onnx"] == 1.0  # the one class it still predicts
    assert row["worst_class"] in ("dog", "owl") and row["worst_class_drop_pp"] == max(c["drop_pp"] for c in classes.values())
    assert row["worst_class_drop_pp"] > 5 and row["most_moved"][0][1] > 0
    assert "## Per class" in (tmp_path / "m.report.md").read_text()
    # Off by default: the same variant passes the overall gate it was given.
    assert run_export(*args).exit_code == 0 and out.exists()
