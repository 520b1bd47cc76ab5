"""onnx-predict and the Predictor API on a tiny exported model."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import ROOT, make_image
from alexnet_onnx.runtime import Predictor
from alexnet_onnx.runtime.errors import ModelError
from alexnet_onnx.runtime.cli import main


def predict(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def photos(tmp_path) -> Path:
    rng = np.random.default_rng(5)
    (tmp_path / "sub").mkdir()
    make_image(0, (50, 40), rng).save(tmp_path / "a cat.png")
    make_image(1, (33, 61), rng).save(tmp_path / "sub" / "b_dög.jpg")
    make_image(2, (32, 32), rng).save(tmp_path / "sub" / "c.bmp")
    (tmp_path / ".hidden.png").write_bytes(b"not even an image")
    (tmp_path / "readme.txt").write_text("skipped inside directories: not an image suffix")
    return tmp_path


def test_text_output_one_line_per_image(exported_model, photos):
    result = predict("-m", exported_model, photos)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(photos / "a cat.png"), str(photos / "sub" / "b_dög.jpg"), str(photos / "sub" / "c.bmp")]
    for line in lines:
        label, score = line.split("\t")[1].split()
        assert label in ("cat", "dog", "owl") and 0 < float(score) <= 1


def test_json_lines_with_top_k(exported_model, photos):
    result = predict("-m", exported_model, "--format", "json", "--top-k", "3", photos / "a cat.png")
    assert result.exit_code == 0
    (obj,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert obj["path"] == str(photos / "a cat.png")
    assert len(obj["top_k"]) == 3 and obj["label"] == obj["top_k"][0]["label"]
    scores = [t["score"] for t in obj["top_k"]]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5


def test_csv_rows(exported_model, photos):
    result = predict("-m", exported_model, "--format", "csv", "--top-k", "2", photos / "sub")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2", "1", "2"] and all(r["error"] == "" for r in rows)


def test_bad_inputs_are_reported_and_good_ones_still_classified(exported_model, photos, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    good = photos / "a cat.png"
    (tmp_path / "trunc.jpg").write_bytes((photos / "sub" / "b_dög.jpg").read_bytes()[:200])
    args = [tmp_path / "empty.jpg", good, tmp_path / "missing.jpg", tmp_path / "text.png", tmp_path / "trunc.jpg"]
    result = predict("-m", exported_model, "--format", "json", *args)
    assert result.exit_code == 1
    objs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["path"] for o in objs] == [str(a) for a in args]  # input order kept
    assert "label" in objs[1] and all("error" in o for i, o in enumerate(objs) if i != 1)
    assert all("\n" not in o.get("error", "") for o in objs)
    text = predict("-m", exported_model, *args)
    assert text.exit_code == 1 and len(text.stdout.splitlines()) == 1
    errors = [line for line in text.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4 and "Traceback" not in text.stderr


def test_glob_and_odd_file_names(exported_model, tmp_path):
    name = "new\nline \u00e9\u00e8.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / name)
    result = predict("-m", exported_model, "--format", "json", str(tmp_path / "*.png"))
    assert result.exit_code == 0
    (obj,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert obj["path"] == str(tmp_path / name)
    text = predict("-m", exported_model, str(tmp_path / "*.png"))
    assert len(text.stdout.splitlines()) == 1 and "\\n" in text.stdout


def test_eval_reports_accuracy(exported_model, tiny_folder):
    result = predict("-m", exported_model, "--eval", tiny_folder / "test", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 12 and 0 <= report["top1"] <= report["top5"] <= 1
    assert set(report["per_class"]) == {"cat", "dog", "owl"}


def test_eval_matches_predictor(exported_model, tiny_folder):
    p = Predictor(exported_model)
    files = sorted((tiny_folder / "test").glob("*/*.png"))
    preds = p.predict(files, top_k=1)
    expected = np.mean([pred.label == f.parent.name for pred, f in zip(preds, files)])
    report = json.loads(predict("-m", exported_model, "--eval", tiny_folder / "test", "--format", "json").stdout)
    assert report["top1"] == pytest.approx(expected)


def test_eval_csv_is_a_header_and_one_row_overall_and_per_class(exported_model, tiny_folder, tmp_path):
    data = tmp_path / "test"
    shutil.copytree(tiny_folder / "test", data)
    (data / "cat" / "garbage.png").write_bytes(b"not an image")
    result = predict("-m", exported_model, "--eval", data, "--format", "csv")
    assert result.exit_code == 1, result.output  # one image failed
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["scope", "label", "n", "failed", "top1", "top5"]
    assert rows[1][:4] == ["all", "", "12", "1"]
    assert [r[:4] for r in rows[2:]] == [["class", "cat", "4", "1"], ["class", "dog", "4", "0"], ["class", "owl", "4", "0"]]
    report = json.loads(predict("-m", exported_model, "--eval", data, "--format", "json").stdout)
    assert [float(v) for v in rows[1][4:]] == [report["top1"], report["top5"]]
    for row in rows[2:]:
        assert [float(v) for v in row[4:]] == [report["per_class"][row[1]][k] for k in ("top1", "top5")]


def test_eval_with_top_k_reports_that_accuracy_too(exported_model, tiny_folder):
    files = sorted((tiny_folder / "test").glob("*/*.png"))
    preds = Predictor(exported_model).predict(files, top_k=2)
    expected = np.mean([f.parent.name in [label for label, _ in pred.top_k] for pred, f in zip(preds, files)])
    args = ("-m", exported_model, "--eval", tiny_folder / "test", "--top-k", 2)
    report = json.loads(predict(*args, "--format", "json").stdout)
    assert list(report)[:3] == ["top1", "top2", "top5"] and report["top2"] == pytest.approx(expected)
    assert report["top1"] <= report["top2"] <= report["top5"]
    assert all(set(stats) == {"top1", "top2", "top5", "n", "failed"} for stats in report["per_class"].values())
    assert next(csv.reader(io.StringIO(predict(*args, "--format", "csv").stdout)))[4:] == ["top1", "top2", "top5"]
    text = predict(*args).stdout.splitlines()
    assert text[0].startswith(f"top-1 {report['top1']:.4f}  top-2 {report['top2']:.4f}  top-5 ")


def test_eval_refuses_unknown_class_folders(exported_model, tmp_path):
    for name in ("cat", "zebra", "yak"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    result = predict("-m", exported_model, "--eval", tmp_path)
    assert result.exit_code == 3
    assert "yak, zebra" in result.stderr and "not labels" in result.stderr


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-lfs"),
        (os.urandom(4096), "not a valid ONNX model"),
    ],
)
def test_bad_model_exits_3_before_reading_images(tmp_path, photos, content, message):
    model = tmp_path / "m.onnx"
    if content is not None:
        model.write_bytes(content)
    result = predict("-m", model, photos)
    assert result.exit_code == 3 and message in result.stderr
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1


def test_truncated_model_exits_3(exported_model, tmp_path, photos):
    model = tmp_path / "t.onnx"
    model.write_bytes(exported_model.read_bytes()[:100_000])
    result = predict("-m", model, photos)
    assert result.exit_code == 3 and "not a valid ONNX model" in result.stderr


BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command, args", [
    ("onnx-predict", ["-m", "{model}"]),
    ("onnx-predict", ["-m", "{model}", "--top-k", "0", "x.jpg"]),
    ("onnx-predict", ["-m", "{model}", "--format", "xml", "x.jpg"]),
    ("onnx-predict", ["-m", "{model}", "--eval", "d", "--ray", "local", "--top-k", "3"]),
    ("onnx-predict", ["--no-such-option"]),
    ("train-alexnet", ["--data-dir", "d", "--arch", "vgg", "--epochs", "1", "--dataset", "cifar10"]),
    ("train-alexnet", ["--data-dir", "d"]),
    ("export-onnx", []),
    ("export-onnx", ["ckpt.pt", "-o", "m.onnx", "--quantize", "int4"]),
])
def test_usage_errors_are_one_line_and_exit_2(exported_model, tmp_path, command, args):
    args = [a.replace("{model}", str(exported_model)) for a in args]
    proc = subprocess.run([str(BIN / command), *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


@pytest.mark.parametrize("command", ["train-alexnet", "export-onnx"])
def test_training_commands_without_torch_say_what_to_install(tmp_path, command):
    """The torch-free install has the console scripts too: without torch they say, in one line,
    which extra to install (exit 2), instead of a traceback or 'a bug'."""
    module = {"train-alexnet": "alexnet_onnx.train.cli", "export-onnx": "alexnet_onnx.export.cli"}[command]
    args = (["--dataset", "cifar10", "--data-dir", str(tmp_path), "--arch", "alexnet_cifar", "--epochs", "1"]
            if command == "train-alexnet" else [str(tmp_path / "best.pt"), "-o", str(tmp_path / "m.onnx")])
    script = (f"import sys; sys.modules['torch'] = None; sys.argv[0] = {command!r}\n"
              f"from {module} import main; main()")
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["error: this command needs the training extra (torch is not installed): "
                                        "pip install 'alexnet-onnx[train]'"]


def test_a_folder_without_images_is_an_error_and_skipped_files_are_counted(exported_model, photos, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    result = predict("-m", exported_model, empty, photos / "a cat.png", photos)
    assert result.exit_code == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [
        str(photos / "a cat.png"), str(photos / "a cat.png"), str(photos / "sub" / "b_dög.jpg"), str(photos / "sub" / "c.bmp")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(empty) in errors[0] and "no image files" in errors[0]
    assert "note: 3 file(s)" in result.stderr  # readme.txt, and notes.txt twice: empty/ lies inside photos/


def test_predictor_api(exported_model, photos):
    p = Predictor(exported_model, threads=1)
    assert p.contract.labels == ("cat", "dog", "owl") and p.contract.variant == "fp32"
    x = p.preprocess(photos / "a cat.png")
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    from_path, from_pil, from_array = p.predict(
        [photos / "a cat.png", Image.open(photos / "a cat.png"), x], top_k=2
    )
    assert from_path == from_pil == from_array and len(from_path.top_k) == 2


def test_weights_are_read_from_the_model_file_itself(exported_model, tmp_path, monkeypatch):
    """onnxruntime gets a small proto whose weights reference a private copy of the .onnx file
    (so the file can be truncated meanwhile without a SIGBUS); the logits equal an ordinary load's,
    through a symlink, in a non-ASCII folder, from any cwd."""
    import onnxruntime as ort

    from alexnet_onnx.runtime.modelfile import open_model

    folder = tmp_path / "mödels dir"
    folder.mkdir()
    target = folder / "m.onnx"
    shutil.copy(exported_model, target)
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "link.onnx"
    link.symlink_to(target)
    with open_model(link, reference_weights=True) as model:
        # the weights are referenced in a private copy (memory-backed), never in the file itself
        private = model.weights_folder
        assert len(model.source) < target.stat().st_size / 10 and private != os.path.realpath(folder)
        assert sorted(os.listdir(private)) == ["model.onnx"] and os.stat(private).st_mode & 0o077 == 0
    assert not os.path.exists(private)  # removed once closed (the session has mapped what it needs)
    with open_model(link) as model:  # the ordinary load: the checked descriptor itself, a private copy
        assert model.source == f"/proc/self/fd/{model.fd}" and model.weights_folder is None

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    reference = ort.InferenceSession(str(exported_model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    monkeypatch.chdir(tmp_path / "links")  # a file name resolved against the cwd would not be found
    for few_images in (True, False):
        np.testing.assert_allclose(Predictor(link, few_images=few_images).logits(x), reference, rtol=1e-5, atol=1e-5)


def test_output_into_closed_pipe_has_no_traceback(exported_model, photos):
    many = [str(photos / "a cat.png")] * 200
    proc = subprocess.run(
        f"{sys.executable} -m alexnet_onnx.runtime.cli -m {exported_model} {' '.join(repr(m) for m in many)} | head -1",
        shell=True, capture_output=True, text=True, cwd=ROOT,
    )
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr and "Error" not in proc.stderr


def test_command_writes_all_output_before_its_quick_exit(exported_model, photos, tmp_path):
    """The console entry ends with os._exit: buffered output must be flushed, the code kept."""
    args = ["-m", str(exported_model), "--format", "json", str(photos), str(tmp_path / "missing.jpg")]
    out = tmp_path / "preds.jsonl"
    with open(out, "w") as f:  # a file: block-buffered, lost if not flushed
        proc = subprocess.run([sys.executable, "-m", "alexnet_onnx.runtime.cli", *args], stdout=f, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert proc.returncode == 1 and "missing.jpg" in out.read_text()  # JSON reports failures in line
    assert out.read_text() == predict(*args).stdout and len(out.read_text().splitlines()) == 4


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_model_changed_while_loading_is_never_misread(exported_model, tmp_path, monkeypatch, how):
    """A model file renamed over or rewritten in place between the check and onnxruntime's read
    is refused, on both load paths: the weights never come from bytes that were not checked."""
    import onnx

    from alexnet_onnx.runtime import modelfile, predictor

    path = tmp_path / "m.onnx"
    shutil.copy(exported_model, path)
    other = onnx.load(str(exported_model))
    other.doc_string = "x" * 1000  # same weights, shifted offsets
    set_labels = [p for p in other.metadata_props if p.key == "labels"][0]
    set_labels.value = json.dumps(["x", "y", "z"])
    replacement = tmp_path / "new.onnx"
    onnx.save(other, str(replacement))

    def open_then_change(p, **kwargs):
        model = modelfile.open_model(p, **kwargs)
        if how == "rename":
            os.replace(replacement, path)
        else:
            with open(path, "r+b") as f:
                f.write(replacement.read_bytes())
        return model

    monkeypatch.setattr(predictor, "open_model", open_then_change)
    for few_images in (True, False):
        shutil.copy(exported_model, path)
        onnx.save(other, str(replacement))
        if how == "rename":
            with pytest.raises(ModelError, match="changed while it was loaded"):
                Predictor(path, few_images=few_images)
        else:  # rewritten after the check: the session loads the private copy that was checked
            assert Predictor(path, few_images=few_images).labels == ("cat", "dog", "owl")
    monkeypatch.setattr(predictor, "open_model", modelfile.open_model)
    assert Predictor(path, few_images=True).labels == ("x", "y", "z")  # the new file itself is fine


def test_model_rewritten_while_copied_is_refused(exported_model, tmp_path, monkeypatch):
    """Rewritten in place while its private copy is taken, the copy could mix old and new bytes:
    refused with one line, on both load paths."""
    from alexnet_onnx.runtime.modelfile import open_model

    path = tmp_path / "m.onnx"
    real_sendfile = os.sendfile

    def sendfile_then_rewrite(out_fd, in_fd, offset, count):
        sent = real_sendfile(out_fd, in_fd, offset, count)
        if offset == 0:
            with open(path, "r+b") as f:
                f.write(b"\x00" * 64)
        return sent

    monkeypatch.setattr(os, "sendfile", sendfile_then_rewrite)
    for reference_weights in (True, False):
        shutil.copy(exported_model, path)
        with pytest.raises(ModelError, match="changed while it was loaded"):
            open_model(path, reference_weights=reference_weights)


def test_long_lived_predictor_keeps_its_own_copy_of_the_weights(exported_model, tmp_path):
    """The default (non one-shot) Predictor must not read the file after loading: rewriting the
    file in place (cp over it, rsync --inplace) leaves its predictions unchanged."""
    path = tmp_path / "m.onnx"
    shutil.copy(exported_model, path)
    p = Predictor(path)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    before = p.logits(x)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # same inode, every byte after the header replaced
        f.seek(1024)
        f.write(os.urandom(size - 1024))
    np.testing.assert_array_equal(p.logits(x), before)


def test_duplicate_raw_data_follows_protobuf_last_one_wins():
    from alexnet_onnx.runtime.protowalk import scan_model

    from conftest import proto

    large, small = b"\x01" * 8192, b"\x02" * 16
    for first, last in ((large, small), (small, large)):
        tensor = proto(8, b"w") + proto(9, first) + proto(9, last)  # raw_data twice
        model = proto(7, proto(5, tensor))
        (start, end), = scan_model(model).initializer_data
        assert model[start:end] == last


def test_ray_without_the_cluster_extra_is_one_usage_line(exported_model, tmp_path, monkeypatch):
    """The torch-free install has no Ray: --ray says what to install, exit 2, before any work."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("ray", "pyarrow") else real(name, *a))
    result = predict("-m", exported_model, "--ray", "local", tmp_path, "--output", tmp_path / "rows.jsonl")
    assert result.exit_code == 2, result.output
    assert "pip install 'alexnet-onnx[cluster]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "rows.jsonl").exists()
