"""Model files and inputs built by an attacker: onnx-predict opens no file but the model, refuses
every defect with exit 3 before reading images, never blocks, never prints raw control
characters and never prints a score it did not compute from finite numbers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, make_image, proto
from fuzzing import MUTATIONS, check_model_file, mutate
from alexnet_onnx.runtime import Predictor
from alexnet_onnx.runtime.cli import main
from alexnet_onnx.runtime.errors import ModelError
from alexnet_onnx.runtime.files import NotRegularFile, open_regular
from alexnet_onnx.runtime.modelfile import open_model

onnx = pytest.importorskip("onnx")  # the attack files are built with onnx ([train]/[dev] extras)
from onnx import TensorProto, helper  # noqa: E402

CONTROL = [chr(c) for c in range(0x20) if c != 0x20] + ["\x7f", "\x9b", "\u2028", "\u202e"]


def cli(*args, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """onnx-predict in a fresh process (what a terminal sees, onnxruntime's own C++ output included);
    a hang fails the test instead of blocking the suite."""
    return subprocess.run([sys.executable, "-m", "alexnet_onnx.runtime.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, errors="surrogateescape", **kwargs)


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(3)
    (tmp_path / "imgs").mkdir()
    paths = [tmp_path / "imgs" / f"{i}.png" for i in range(6)]
    for i, path in enumerate(paths):
        make_image(i % 3, (40, 36), rng).save(path)
    return paths


def load(exported_model) -> "onnx.ModelProto":
    return onnx.load(str(exported_model))


def save(model, folder: Path, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(model, str(path))
    return path


def set_meta(model, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value


def add_to_logits(model, nodes: list, extra: str) -> None:
    """Make the graph's output logits + `extra` (a float tensor of shape (3,) made by `nodes`)."""
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_pre"
    model.graph.node.extend([*nodes, helper.make_node("Add", ["logits_pre", extra], ["logits"])])


def external(name: str, location: str = "decoy.bin", dims=(3,), dtype=TensorProto.FLOAT) -> TensorProto:
    tensor = TensorProto(name=name, data_type=dtype, dims=list(dims), data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def constant(output: str, tensor: TensorProto):
    return helper.make_node("Constant", [], [output], value=tensor)


def branch(name: str, nodes: list, out: str, initializers=()) -> "onnx.GraphProto":
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [3])],
                             list(initializers))


def true_const(name: str) -> TensorProto:
    return helper.make_tensor(name, TensorProto.BOOL, [], [True])


def with_external(kind: str, model) -> None:
    """Put a tensor whose data lies in decoy.bin (beside the model) somewhere in `model`."""
    g = model.graph
    if kind == "initializer":
        g.initializer.append(external("c"))
        add_to_logits(model, [], "c")
    elif kind == "constant":
        add_to_logits(model, [constant("c", external("c_value"))], "c")
    elif kind == "if-subgraph":
        g.initializer.append(true_const("cond"))
        then = branch("then", [helper.make_node("Identity", ["w"], ["t"])], "t", [external("w")])
        other = branch("else", [constant("e", helper.make_tensor("z", TensorProto.FLOAT, [3], [0, 0, 0]))], "e")
        add_to_logits(model, [helper.make_node("If", ["cond"], ["c"], then_branch=then, else_branch=other)], "c")
    elif kind == "nested-subgraph":
        g.initializer.append(true_const("cond"))
        inner = branch("inner", [constant("i", external("deep"))], "i")
        other = branch("else", [constant("e", helper.make_tensor("z", TensorProto.FLOAT, [3], [0, 0, 0]))], "e")
        middle = branch("middle", [helper.make_node("If", ["cond"], ["m"], then_branch=inner, else_branch=other)], "m")
        add_to_logits(model, [helper.make_node("If", ["cond"], ["c"], then_branch=middle, else_branch=other)], "c")
    elif kind == "loop-body":
        g.initializer.extend([helper.make_tensor("trips", TensorProto.INT64, [], [1]), true_const("cond")])
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), constant("scan", external("body_w"))], "body",
            [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("scan", TensorProto.FLOAT, [3])])
        add_to_logits(model, [helper.make_node("Loop", ["trips", "cond"], ["c"], body=body)], "c")
    elif kind == "sparse-initializer":
        indices = helper.make_tensor("c_idx", TensorProto.INT64, [3], [0, 1, 2])
        g.sparse_initializer.append(helper.make_sparse_tensor(external("c"), indices, [3]))
        add_to_logits(model, [], "c")
    elif kind == "sparse-attribute":
        indices = helper.make_tensor("c_idx", TensorProto.INT64, [3], [0, 1, 2])
        sparse = helper.make_sparse_tensor(external("c_values"), indices, [3])
        add_to_logits(model, [helper.make_node("Constant", [], ["c"], sparse_value=sparse)], "c")
    elif kind == "function":
        body = [constant("k", external("fn_w")), helper.make_node("Add", ["x", "k"], ["y"])]
        model.functions.append(helper.make_function("attack", "AddK", ["x"], ["y"], body,
                                                    [helper.make_opsetid("", 20)]))
        model.opset_import.append(helper.make_opsetid("attack", 1))
        producer = next(n for n in g.node if "logits" in n.output)
        producer.output[0] = "logits_pre"
        g.node.append(helper.make_node("AddK", ["logits_pre"], ["logits"], domain="attack"))
    elif kind == "training-info":
        init = helper.make_graph([], "init", [], [], [external("t")])
        model.training_info.append(onnx.TrainingInfoProto(initialization=init))
    else:
        raise ValueError(kind)


EXTERNAL_KINDS = ["initializer", "constant", "if-subgraph", "nested-subgraph", "loop-body", "sparse-initializer",
                  "sparse-attribute", "function", "training-info"]


@pytest.mark.parametrize("kind", EXTERNAL_KINDS)
def test_external_data_anywhere_is_refused_without_opening_it(exported_model, images, tmp_path, kind):
    """The decoy beside the model is a FIFO: opening it would block, so a run that ends at all
    never opened it. One file (weights read by reference) and a folder (ordinary load) alike."""
    model = load(exported_model)
    with_external(kind, model)
    path = save(model, tmp_path / "models")
    os.mkfifo(tmp_path / "models" / "decoy.bin")
    for inputs in ([images[0]], [images[0].parent]):
        proc = cli("-m", path, *inputs)
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.count("\n") == 1 and "refers to external data" in proc.stderr, proc.stderr


def test_the_model_is_the_only_file_opened(exported_model, images, tmp_path):
    """Watched with strace: on both load paths, for a good model and a hostile one, nothing in
    the model's folder is opened but the model itself."""
    if not shutil.which("strace"):
        pytest.skip("strace is not installed (apt-get install strace)")
    folder = tmp_path / "models"
    good = save(load(exported_model), folder, "good.onnx")
    hostile = load(exported_model)
    with_external("constant", hostile)
    bad = save(hostile, folder, "bad.onnx")
    (folder / "decoy.bin").write_bytes(np.full(3, 1000, np.float32).tobytes())
    for model, code in ((good, 0), (bad, 3)):
        for inputs in ([images[0]], [images[0].parent]):
            log = tmp_path / "strace.log"
            proc = subprocess.run(  # -y: each returned descriptor with the file it really is
                ["strace", "-f", "-qq", "-y", "-e", "trace=open,openat,openat2", "-o", str(log),
                 sys.executable, "-m", "alexnet_onnx.runtime.cli", "-m", str(model), *map(str, inputs)],
                capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert proc.returncode == code, proc.stderr
            opened = {_opened(line) for line in log.read_text().splitlines() if '"' in line}
            assert opened, "strace saw no open at all"
            assert {p for p in opened if p.startswith(str(folder))} == {str(model)}


def _opened(line: str) -> str:
    """The file an strace open line reached (`= 5</real/path>`), else the path it asked for."""
    result = line.rsplit("= ", 1)[-1]
    if "<" in result and result.rstrip().endswith(">"):
        return result[result.index("<") + 1:result.rstrip().rindex(">")]
    return os.path.normpath(line.split('"')[1])


def test_a_reference_the_walk_missed_still_cannot_resolve(exported_model, tmp_path, monkeypatch):
    """Defence in depth: onnxruntime is handed the checked descriptor (/proc/self/fd/N), so even
    with the walk's external-data check switched off, a reference beside the model resolves
    nowhere and onnxruntime refuses it."""
    from alexnet_onnx.runtime import protowalk

    model = load(exported_model)
    with_external("constant", model)
    path = save(model, tmp_path / "models")
    (tmp_path / "models" / "decoy.bin").write_bytes(np.full(3, 1000, np.float32).tobytes())
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    # A walk that misses every reference: it reads the metadata and finds nothing else.
    monkeypatch.setattr(protowalk, "scan_model", lambda buf: protowalk.Scan(metadata, ()))
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        Predictor(path)


# -- the walk: strict and bounded ----------------------------------------------------------------

GRAPH = proto(7, proto(2, b"g"))  # a model with a graph named "g"


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\x00" * (20 << 20), "invalid field number 0"),
        (GRAPH + b"\x00\x00", "invalid field number 0"),
        (GRAPH + b"\x0b", "invalid wire type 3"),  # start group
        (GRAPH + b"\x0e", "invalid wire type 6"),
        (GRAPH + b"\xfa\xff\xff\xff\x7f\x00", "invalid field number"),  # 2**29 and above
        (GRAPH + proto(99, b"") [:1] + b"\xff" * 11, "varint longer than 10 bytes"),
        (GRAPH + b"\x3a\xff\xff\xff\xff\x0f", "runs past the end"),  # graph, 4 GB long
        (proto(7, proto(5, proto(9, b"x") + b"\x4a\x10")), "runs past the end"),  # inside a tensor
        (GRAPH + proto(14, proto(1, b"labels") + proto(2, b'["a"]')) * 2, "appears more than once"),
        (GRAPH + proto(14, proto(1, b"lab\xffels") + proto(2, b"x")), "not valid UTF-8"),
        (GRAPH + proto(14, proto(1, b"labels") + proto(2, b'["caf\xe9"]')), "not valid UTF-8"),
        (proto(1, 8, wire=0) * 10, "no graph"),
        (proto(1, 8, wire=0) * 1_000_001, "more than 1,000,000 protobuf fields"),
        (proto(7, 5, wire=0), "must be a message"),
    ],
    ids=["zeros-20MB", "field-0", "wire-3", "wire-6", "field-2^29", "long-varint", "huge-length",
         "truncated-tensor", "duplicate-metadata", "metadata-key-utf8", "label-utf8", "no-graph", "too-many-fields",
         "graph-not-message"],
)
def test_malformed_files_are_refused_at_once_in_bounded_memory(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(ModelError, match=message) as info:
            open_model(path).close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"the walk allocated {peak} bytes"  # 20 MB of zeros once took 1.5 GB
    assert "\n" not in str(info.value)


def test_deep_nesting_is_refused():
    from alexnet_onnx.runtime.protowalk import Malformed, scan_model

    inner = b""
    for _ in range(30):  # 90 levels: graph -> node -> attribute -> graph ...
        inner = proto(1, proto(5, proto(6, inner)))
    with pytest.raises(Malformed, match="nested more than"):
        scan_model(proto(7, inner))


def test_unknown_fields_are_skipped_not_copied_and_huge_ones_refused(exported_model, tmp_path):
    path = tmp_path / "big.onnx"
    path.write_bytes(exported_model.read_bytes() + proto(77, b"\x01" * (15 << 20)))  # ignored padding
    for reference_weights in (False, True):
        tracemalloc.start()
        try:
            with open_model(path, reference_weights=reference_weights) as model:
                assert model.metadata
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < (1 << 20) + (2 * len(path.read_bytes()) if reference_weights else 0)
    path.write_bytes(exported_model.read_bytes() + proto(77, b"\x01" * (17 << 20)))
    with pytest.raises(ModelError, match="unknown model field 77 holds 17 MiB"):
        open_model(path).close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**32 - 1))
def test_fuzz_mutated_models_are_refused_or_load(exported_model, tmp_path, kind, seed):
    """Structured mutations of a real exported model: the checks refuse them in bounded memory,
    or onnxruntime loads them, or it refuses them: always a model or one-line ModelError."""
    path = tmp_path / "fuzz.onnx"
    check_model_file(path, mutate(exported_model.read_bytes(), kind, np.random.default_rng(seed)))
    try:
        Predictor(path, few_images=bool(seed % 2))
    except ModelError as exc:
        assert "\n" not in str(exc)


# -- files that are not regular --------------------------------------------------------------------


def test_a_fifo_as_model_or_image_never_blocks(exported_model, images, tmp_path):
    fifo_model = tmp_path / "model.onnx"
    os.mkfifo(fifo_model)
    proc = cli("-m", fifo_model, images[0])
    assert proc.returncode == 3 and "not a regular file" in proc.stderr
    os.mkfifo(images[0].parent / "pipe.png")  # sorts between the good images
    proc = cli("-m", exported_model, "--format", "json", images[0].parent, "/dev/zero")
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows if "label" in r] == [str(p) for p in images]
    errors = [r for r in rows if "error" in r]
    assert [r["path"] for r in errors] == [str(images[0].parent / "pipe.png"), "/dev/zero"]
    assert all("not a regular file" in r["error"] for r in errors)


def test_open_regular_opens_regular_files_and_refuses_the_rest_without_blocking(tmp_path):
    (tmp_path / "plain").write_bytes(b"bytes")
    fd = open_regular(tmp_path / "plain")
    try:
        assert os.read(fd, 16) == b"bytes"
    finally:
        os.close(fd)
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would never return
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(_refusal(tmp_path / "fifo")), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the stuck open before failing
        with open(tmp_path / "fifo", "wb"):
            pass
    assert outcome == [NotRegularFile]
    assert _refusal(Path("/dev/zero")) is NotRegularFile
    assert _refusal(tmp_path) is IsADirectoryError
    assert _refusal(tmp_path / "missing") is FileNotFoundError


def _refusal(path: Path) -> type:
    try:
        os.close(open_regular(path))
    except OSError as exc:
        return type(exc)
    return type(None)


def test_a_fifo_swapped_in_after_the_listing_does_not_block(exported_model, tmp_path):
    """The check is on what was opened (without blocking), not on a name looked at earlier."""
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    p = Predictor(exported_model)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(_error_of(p, fifo)), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the stuck open before failing
        with open(fifo, "wb"):
            pass
    assert outcome and "not a regular file" in outcome[0]


def _error_of(p: Predictor, path: Path) -> str:
    try:
        p.preprocess(path)
    except Exception as exc:
        return str(exc)
    return "no error"


# -- defects of the model: exit 3, before any result is written ---------------------------------


def _cast_input(dtype: int):
    def edit(model):
        model.graph.input[0].type.tensor_type.elem_type = dtype
        for node in model.graph.node:
            node.input[:] = ["input_f" if name == "input" else name for name in node.input]
        model.graph.node.insert(0, helper.make_node("Cast", ["input"], ["input_f"], to=TensorProto.FLOAT))
    return edit


def _unknown_class_count(model):
    """Output declared (batch, ?) that is really (batch, 4): found by shape inference or a first run."""
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[0] = "logits_pre"
    model.graph.initializer.extend([helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                                    helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model.graph.node.extend([
        helper.make_node("Slice", ["logits_pre", "zero", "one", "one"], ["extra"]),
        helper.make_node("Concat", ["logits_pre", "extra"], ["logits"], axis=1),
    ])
    del model.graph.output[0].type.tensor_type.shape.dim[1:]
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "classes"


DEFECTS = {
    "labels-nested-deep": (lambda m: set_meta(m, "labels", "[" * 100_000 + "]" * 100_000), "not valid JSON"),
    "resize-10**400": (lambda m: set_meta(m, "preprocess", json.dumps(
        {**_pre(m), "resize": 10**400})), "1 to 4096"),
    "crop-12000": (lambda m: set_meta(m, "preprocess", json.dumps({**_pre(m), "resize": 12000, "crop": 12000})),
                   "1 to 4096"),
    "std-0-in-float32": (lambda m: set_meta(m, "preprocess", json.dumps({**_pre(m), "std": [1e-50, 1, 1]})), "std"),
    "mean-1e300": (lambda m: set_meta(m, "preprocess", json.dumps({**_pre(m), "mean": [1e300, 0, 0]})), "mean"),
    "input-double": (_cast_input(TensorProto.DOUBLE), r"tensor\(double\)"),
    "input-uint8": (_cast_input(TensorProto.UINT8), r"tensor\(uint8\)"),
    "unknown-class-count": (_unknown_class_count, "not \\(batch, 3\\)|does not match the contract's 3 labels"),
}


def _pre(model) -> dict:
    return json.loads(next(p.value for p in model.metadata_props if p.key == "preprocess"))


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_model_defects_exit_3_before_any_result(exported_model, images, tmp_path, defect):
    """The session is built while images decode, but no result (nor an image's error) is written
    before the model is known to be usable: a defect is the run's one line, exit 3."""
    edit, message = DEFECTS[defect]
    model = load(exported_model)
    edit(model)
    path = save(model, tmp_path)
    missing = str(tmp_path / "missing.jpg")
    folder = [missing, str(images[0].parent), "--batch-size", "1"]
    for inputs in ([missing], [missing] * 5, folder, [*folder, "--format", "csv"], [*folder, "--format", "json"]):
        result = CliRunner().invoke(main, ["-m", str(path), *inputs])
        assert result.exit_code == 3, result.output
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and "missing" not in result.stderr
        assert re.search(message, result.stderr), result.stderr


def test_background_session_defers_defects_to_first_use(exported_model, images, tmp_path):
    model = load(exported_model)
    _cast_input(TensorProto.DOUBLE)(model)
    bad = save(model, tmp_path)
    p = Predictor(bad, background=True)  # the contract is fine: no error yet
    assert p.preprocess(images[0]).shape == (3, p.contract.preprocess.crop, p.contract.preprocess.crop)
    for use in (p.ready, lambda: p.predict(images[:1]), lambda: p.session):
        with pytest.raises(ModelError, match=r"tensor\(double\)"):
            use()
    with pytest.raises(ModelError, match=r"tensor\(double\)"):
        Predictor(bad)  # without background, construction raises
    now, later = Predictor(exported_model), Predictor(exported_model, background=True)
    assert np.array_equal(np.stack([x.index for x in now.predict(images)]),
                          np.stack([x.index for x in later.predict(images)]))
    assert np.array_equal(now.logits(np.stack([now.preprocess(i) for i in images])),
                          later.logits(np.stack([later.preprocess(i) for i in images])))


def test_invalid_utf8_in_metadata_exits_3(exported_model, tmp_path):
    data = exported_model.read_bytes() + proto(14, proto(1, b"note") + proto(2, b"\xff\xfe"))
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    result = CliRunner().invoke(main, ["-m", str(path), "never-read.jpg"])
    assert result.exit_code == 3 and "not valid UTF-8" in result.stderr


def test_a_fixed_batch_of_one_is_honoured(exported_model, images, tmp_path):
    model = load(exported_model)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    path = save(model, tmp_path)
    args = ["--format", "json", "--batch-size", "4", *map(str, images)]
    fixed = CliRunner().invoke(main, ["-m", str(path), *args])
    dynamic = CliRunner().invoke(main, ["-m", str(exported_model), *args])
    assert fixed.exit_code == 0, fixed.output
    assert [json.loads(x)["label"] for x in fixed.stdout.splitlines()] == \
        [json.loads(x)["label"] for x in dynamic.stdout.splitlines()]
    assert Predictor(path).fixed_batch == 1


# -- outputs that are not numbers, strings that are not text ------------------------------------


def test_non_finite_outputs_are_error_rows_and_json_stays_json(exported_model, images, tmp_path):
    model = load(exported_model)
    bias = next(t for t in model.graph.initializer if t.name == "classifier.7.bias")
    values = onnx.numpy_helper.to_array(bias).copy()
    values[1] = np.nan
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    path = save(model, tmp_path)
    result = CliRunner().invoke(main, ["-m", str(path), "--format", "json", *map(str, images[:3])])
    assert result.exit_code == 1
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all("not finite" in r["error"] for r in rows)
    text = CliRunner().invoke(main, ["-m", str(path), str(images[0])])
    assert text.exit_code == 1 and "nan" not in text.stdout and "not finite" in text.stderr


def test_nothing_raw_reaches_the_terminal(exported_model, images, tmp_path):
    model = load(exported_model)
    labels = ["\x1b]0;pwned\x07title", "bell\x07\x1b[2J", "two\nlines\u202e"]
    set_meta(model, "labels", json.dumps(labels))
    path = save(model, tmp_path / "evil\nname\x1b[31m")
    odd_image = images[0].parent / "x\x1b[1m\n.png"
    shutil.copy(images[0], odd_image)
    for fmt in ("text", "csv", "json"):
        proc = cli("-m", path, "--format", fmt, "--top-k", "3", odd_image, tmp_path / "missing\x07.png")
        assert proc.returncode == 1, proc.stderr
        if fmt == "text":  # one tab per result line: the separator the format itself writes
            assert all(line.count("\t") == 1 for line in proc.stdout.splitlines()), repr(proc.stdout)
        for stream in (proc.stdout.replace("\t", "") if fmt == "text" else proc.stdout, proc.stderr):
            assert not any(c in stream.replace("\n", "") for c in CONTROL), repr(stream)
        assert len(proc.stderr.splitlines()) == (1 if fmt == "text" else 0)
        expected_rows = {"text": 1, "csv": 1 + 3 + 1, "json": 2}[fmt]  # csv: header, 3 ranks, 1 error
        assert len(proc.stdout.splitlines()) == expected_rows, proc.stdout
    # a model path with a newline, and onnxruntime's own message quoting a tensor name
    broken = load(exported_model)
    broken.graph.node[0].op_type = "NoSuchOp\x1b[31m"
    bad = save(broken, tmp_path / "bad\nmodel")
    proc = cli("-m", bad, images[0])
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, repr(proc.stderr)
    assert not any(c in proc.stderr[:-1] for c in CONTROL), repr(proc.stderr)


# -- operators outside the allow-list: crashes, hangs and run-time allocations ----------------------

INT64_MIN = -(2**63)
MEMORY_CAP = 3 << 30  # address space for a hostile run: a regression fails instead of taking the machine


def capped_cli(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """`cli` under an address-space cap."""
    import resource

    return cli(*args, timeout=timeout,
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP)))


def _int_tensor(name: str, values, dtype=TensorProto.INT64) -> TensorProto:
    return helper.make_tensor(name, dtype, [len(values)], values)


def _as_float_addend(nodes: list, integer: str) -> list:
    """`nodes`, then `integer` turned into a (3,) float tensor of zeros added to the logits."""
    return [*nodes, helper.make_node("Cast", [integer], ["as_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["as_f", "zero_f"], ["zeroed"]),
            helper.make_node("Expand", ["zeroed", "three"], ["c"])]


def _attack(kind: str, model) -> None:
    g = model.graph
    g.initializer.extend([helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0]), _int_tensor("three", [3])])
    if kind == "int64-min-div-minus-1":  # SIGFPE in constant folding
        g.initializer.extend([_int_tensor("big", [INT64_MIN]), _int_tensor("minus1", [-1])])
        nodes = [helper.make_node("Div", ["big", "minus1"], ["q"])]
        add_to_logits(model, _as_float_addend(nodes, "q"), "c")
    elif kind == "div-by-shape":  # the -1 comes from the input's shape at run time
        g.initializer.extend([_int_tensor("big", [INT64_MIN]), _int_tensor("minus2", [-2])])
        nodes = [helper.make_node("Shape", ["input"], ["s"], start=1, end=2),  # (3,)
                 helper.make_node("Div", ["s", "minus2"], ["m"]),  # -1 (C division truncates)
                 helper.make_node("Div", ["big", "m"], ["q"])]
        add_to_logits(model, _as_float_addend(nodes, "q"), "c")
    elif kind == "integer-div-only":  # no Cast needed: the integer Div itself is refused
        g.initializer.extend([_int_tensor("big", [INT64_MIN]), _int_tensor("minus1", [-1]),
                              _int_tensor("shape3", [3])])
        nodes = [helper.make_node("Div", ["big", "minus1"], ["q"]),
                 helper.make_node("Reshape", ["zero3", "shape3"], ["c"])]
        g.initializer.append(helper.make_tensor("zero3", TensorProto.FLOAT, [3], [0, 0, 0]))
        add_to_logits(model, nodes, "c")
    elif kind == "div-of-maxpool-indices":  # MaxPool's second output is int64, though MaxPool is float
        g.initializer.extend([_int_tensor("big", [INT64_MIN]), _int_tensor("minus1", [-1]), _int_tensor("shape3", [3]),
                              helper.make_tensor("zero3", TensorProto.FLOAT, [3], [0, 0, 0])])
        nodes = [helper.make_node("MaxPool", ["input"], ["pooled", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Sub", ["idx", "idx"], ["zero_i"]),
                 helper.make_node("Add", ["zero_i", "big"], ["a"]),
                 helper.make_node("Add", ["zero_i", "minus1"], ["b"]),
                 helper.make_node("Div", ["a", "b"], ["q"]),
                 helper.make_node("Reshape", ["zero3", "shape3"], ["c"])]
        add_to_logits(model, nodes, "c")
    elif kind in ("loop-pile-up", "loop-10^12-trips"):
        trips = 2**31 if kind == "loop-pile-up" else 10**12
        g.initializer.extend([_int_tensor("trips", [trips]), true_const("cond")])
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"]),
             helper.make_node("Identity", ["v_in"], ["scan"])], "body",
            [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [3]),
             helper.make_tensor_value_info("scan", TensorProto.FLOAT, [3])])
        g.initializer.append(helper.make_tensor("v0", TensorProto.FLOAT, [3], [0, 0, 0]))
        add_to_logits(model, [helper.make_node("Loop", ["trips", "cond", "v0"], ["c", "piled"], body=body)], "c")
    elif kind == "scan-2e8-rows":
        body = helper.make_graph([helper.make_node("Identity", ["row"], ["out"])], "body",
                                 [helper.make_tensor_value_info("row", TensorProto.FLOAT, [3])],
                                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])])
        g.initializer.append(_int_tensor("rows", [200_000_000, 3]))
        nodes = [helper.make_node("ConstantOfShape", ["rows"], ["big"]),
                 helper.make_node("Scan", ["big"], ["scanned"], body=body, num_scan_inputs=1),
                 helper.make_node("ReduceSum", ["scanned"], ["c"], axes=[0], keepdims=0)]
        add_to_logits(model, nodes, "c")
    elif kind == "functions-calling-twice":
        previous = None
        model.opset_import.append(helper.make_opsetid("attack", 1))
        for level in range(41):
            body = [helper.make_node("Identity", ["x"], ["y"])] if previous is None else [
                helper.make_node(previous, ["x"], ["a"], domain="attack"),
                helper.make_node(previous, ["a"], ["y"], domain="attack")]
            model.functions.append(helper.make_function("attack", f"F{level}", ["x"], ["y"], body,
                                                        [helper.make_opsetid("", 20), helper.make_opsetid("attack", 1)]))
            previous = f"F{level}"
        g.initializer.append(helper.make_tensor("v0", TensorProto.FLOAT, [3], [0, 0, 0]))
        add_to_logits(model, [helper.make_node(previous, ["v0"], ["c"], domain="attack")], "c")
    elif kind == "einsum-ellipsis":
        g.initializer.append(helper.make_tensor("v0", TensorProto.FLOAT, [3], [0, 0, 0]))
        add_to_logits(model, [helper.make_node("Einsum", ["v0", "v0"], ["c"], equation="...i,...i->...i")], "c")
    elif kind in ("ConstantOfShape", "Expand", "Tile", "Resize"):  # 3.2 GB from the input's shape
        g.initializer.extend([_int_tensor("s", [1, 3, 32, 32]), _int_tensor("k", [1]),
                              _int_tensor("huge", [1, 1, 800_000, 1000])])
        grow = {"ConstantOfShape": [helper.make_node("ConstantOfShape", ["huge"], ["big"])],
                "Expand": [helper.make_node("Expand", ["input", "huge"], ["big"])],
                "Tile": [helper.make_node("Tile", ["input", "huge"], ["big"])],
                "Resize": [helper.make_node("Constant", [], ["scales"], value=helper.make_tensor(
                    "sc", TensorProto.FLOAT, [4], [1, 1, 200, 200])),
                    helper.make_node("Resize", ["input", "", "scales"], ["big"])]}[kind]
        nodes = [*grow, helper.make_node("ReduceMax", ["big"], ["peak"], keepdims=0),
                 helper.make_node("Mul", ["peak", "zero_f"], ["z"]), helper.make_node("Expand", ["z", "three"], ["c"])]
        add_to_logits(model, nodes, "c")
    elif kind == "subgraph-on-allowed-op":
        then = branch("then", [helper.make_node("Identity", ["w"], ["t"])], "t",
                      [helper.make_tensor("w", TensorProto.FLOAT, [3], [0, 0, 0])])
        producer = next(n for n in g.node if "logits" in n.output)
        producer.attribute.append(helper.make_attribute("g", then))
    else:
        raise ValueError(kind)


ATTACKS = {
    "int64-min-div-minus-1": "operator 'Expand'|casts to|divides", "div-by-shape": "operator 'Shape'",
    "integer-div-only": "divides tensors that are not known to be float",
    "div-of-maxpool-indices": "divides tensors that are not known to be float", "loop-pile-up": "operator 'Loop'",
    "loop-10^12-trips": "operator 'Loop'", "scan-2e8-rows": "operator 'ConstantOfShape'",
    "functions-calling-twice": "defines its own functions", "einsum-ellipsis": "operator 'Einsum'",
    "ConstantOfShape": "operator 'ConstantOfShape'", "Expand": "operator 'Expand'", "Tile": "operator 'Tile'",
    "Resize": "operator 'Resize'", "subgraph-on-allowed-op": "carries a subgraph",
}


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_models_outside_the_operator_allow_list_exit_3_on_both_load_paths(exported_model, images, tmp_path, kind):
    """Each would crash (SIGFPE, SIGABRT), hang the session build or the run, or allocate
    gigabytes; the walk refuses it before onnxruntime sees it: one line, exit 3, under a memory cap."""
    model = load(exported_model)
    _attack(kind, model)
    path = save(model, tmp_path)
    for inputs in ([images[0]], [images[0].parent]):
        proc = capped_cli("-m", path, *inputs)
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.count("\n") == 1 and re.search(ATTACKS[kind], proc.stderr), proc.stderr
        assert "allowed operators" in proc.stderr


def test_every_operator_export_onnx_writes_is_allowed(exported_model):
    """The fixture's fp32 export loads; test_quantize and test_export cover int8 and fp16."""
    from alexnet_onnx.runtime.operators import ALLOWED

    assert {n.op_type for n in load(exported_model).graph.node} <= ALLOWED
    Predictor(exported_model).ready()


def test_float_division_is_allowed(exported_model, images, tmp_path):
    model = load(exported_model)
    model.graph.initializer.append(helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]))
    add_to_logits(model, [helper.make_node("Div", ["logits_pre", "two"], ["c"])], "c")
    path = save(model, tmp_path)
    proc = capped_cli("-m", path, images[0])
    assert proc.returncode == 0, proc.stderr


# -- the file changing under a run, files that only look regular -----------------------------------


def test_truncating_the_model_during_a_run_cannot_kill_it(exported_model, images, tmp_path):
    """Both load paths read a private copy: once the model is checked, truncating the file
    (which kills a process still mapping it with SIGBUS) changes nothing for the run."""
    path = tmp_path / "m.onnx"
    shutil.copy(exported_model, path)
    script = ("import os, sys\nfrom alexnet_onnx.runtime import Predictor\n"
              "for few in (True, False):\n"
              "    p = Predictor(sys.argv[1], few_images=few)\n"
              "    os.truncate(sys.argv[1], 100)\n"
              "    print(p.predict([sys.argv[2]])[0].label)\n"
              "    open(sys.argv[1], 'wb').write(open(sys.argv[3], 'rb').read())\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(images[0]), str(exported_model)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 2
    assert not list(Path("/dev/shm").glob("alexnet-onnx-*")) if Path("/dev/shm").is_dir() else True


def test_a_sysfs_attribute_as_model_is_exit_3_with_its_path(images, tmp_path):
    attribute = next((p for p in Path("/sys/kernel").glob("*") if p.is_file() and os.access(p, os.R_OK)), None)
    if attribute is None:
        pytest.skip("no readable sysfs attribute on this machine")
    link = tmp_path / "model.onnx"
    link.symlink_to(attribute)
    proc = cli("-m", link, images[0])
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(link) in proc.stderr and "not a regular model file" in proc.stderr


# -- memory: bounds a real classifier fits in, and a cap on what a run allocates --------------------


def test_huge_strings_are_refused_by_the_walk(exported_model, tmp_path):
    model = load(exported_model)
    model.graph.node[0].doc_string = "x" * (2 << 20)
    path = save(model, tmp_path)
    with pytest.raises(ModelError, match="node field 6 holds 2,048 KiB; names and texts are limited to 1 MiB"):
        open_model(path).close()


def test_a_fixed_batch_beyond_the_bound_is_exit_3(exported_model, images, tmp_path):
    model = load(exported_model)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 200_000
    path = save(model, tmp_path)
    proc = capped_cli("-m", path, images[0])
    assert proc.returncode == 3 and "a fixed batch must be 1 to 1024" in proc.stderr, proc.stderr


def test_a_run_that_would_allocate_gigabytes_fails_with_one_line(exported_model, images, tmp_path):
    """Allowed operators only: the logits reshaped to (n, 1) and (1, n) and added, a 40 GB outer
    product. onnxruntime's capped arena refuses the allocation; the process never grows."""
    model = load(exported_model)
    n = 100_000
    model.graph.initializer.extend([
        helper.make_tensor("big", TensorProto.FLOAT, [n], np.zeros(n, np.float32)),
        _int_tensor("col", [n, 1]), _int_tensor("row", [1, n]), _int_tensor("three", [3]),
        _int_tensor("zero", [0]), _int_tensor("one", [1])])
    add_to_logits(model, [helper.make_node("Reshape", ["big", "col"], ["a"]),
                          helper.make_node("Reshape", ["big", "row"], ["b"]),
                          helper.make_node("Add", ["a", "b"], ["outer"]),
                          helper.make_node("Slice", ["outer", "zero", "one"], ["first"]),
                          helper.make_node("Slice", ["first", "zero", "three", "one"], ["c3"]),
                          helper.make_node("Reshape", ["c3", "three"], ["c"])], "c")
    path = save(model, tmp_path)
    for inputs in ([images[0]], [images[0].parent]):
        proc = capped_cli("-m", path, *inputs)
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.count("\n") == 1 and "failed to run" in proc.stderr, proc.stderr
