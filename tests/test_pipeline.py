"""The three installed commands end to end: train-alexnet -> export-onnx -> onnx-predict."""

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(*args, cwd):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)


def test_train_export_predict_eval(tiny_folder, tmp_path):
    out = tmp_path / "run"
    train = run(BIN / "train-alexnet", "--dataset", "folder", "--data-dir", tiny_folder, "--arch", "alexnet_cifar",
                "--epochs", 1, "--batch-size", 16, "--limit-train", 24, "--out", out, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "test top-1" in train.stdout and json.loads((out / "metrics.json").read_text())["best_val_top1"] >= 0

    model = tmp_path / "model.onnx"
    export = run(BIN / "export-onnx", out / "best.pt", "-o", model, "--report", tmp_path / "parity.json", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert json.loads((tmp_path / "parity.json").read_text())["fp32"]["top1_agreement"] == 1.0

    images = sorted((tiny_folder / "test").glob("*/*.png"))[:3]
    predict = run(BIN / "onnx-predict", "-m", model, "--format", "json", *images, cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert [json.loads(line)["path"] for line in predict.stdout.splitlines()] == [str(i) for i in images]

    evaluation = run(BIN / "onnx-predict", "-m", model, "--eval", tiny_folder / "test", "--format", "json", cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    report = json.loads(evaluation.stdout)
    ckpt_test = json.loads((out / "metrics.json").read_text())["test_top1"]
    assert report["n"] == 12 and abs(report["top1"] - ckpt_test) < 1e-9  # same images, same answer
