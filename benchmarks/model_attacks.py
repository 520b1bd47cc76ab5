"""Hostile models built from a real exported one at random attacker sizes, for fuzz_modelfile.py.

Each class is `generate(base, rng, path) -> description`: it writes one attack to `path` and says
what it built (enough to rebuild it). Sizes are drawn log-uniformly over ranges an attacker would
pick; huge strings are written sparse or streamed in 1 MiB chunks, never held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from alexnet_onnx.runtime.operators import ALLOWED
from fuzzing import varint  # tests/fuzzing.py: fuzz_modelfile puts tests/ on the path

INT64_MIN, INT32_MIN = -(2**63), -(2**31)
MIB = 1 << 20
CHUNK = MIB  # streamed writes: one chunk in memory at a time
# Operators a stranger's model might carry that the allow-list leaves out.
DISALLOWED = ("Loop", "Scan", "If", "Einsum", "ConstantOfShape", "Expand", "Tile", "Resize", "Shape", "NonZero",
              "Mod", "Range", "TopK", "Upsample", "Size", "OneHot", "ScatterND", "GatherND", "Where", "CumSum",
              "Unique", "Col2Im", "DFT", "Gather", "Compress", "SequenceConstruct", "Bernoulli", "RandomNormal")
# Nested If levels protobuf's own parser accepts (3 messages a level, 100 in all).
PROTOBUF_MAX_IF_DEPTH = 30
DOMAINS = ("ai.onnx", "com.microsoft", "ai.onnx.ml", "attack")


def log_uniform(rng: np.random.Generator, low: float, high: float) -> int:
    return int(10 ** rng.uniform(np.log10(low), np.log10(high)))


def ints(name: str, values, dtype=TensorProto.INT64) -> TensorProto:
    return helper.make_tensor(name, dtype, [len(values)], list(values))


def floats(name: str, values) -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [len(values)], list(values))


def copy(base: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(base)
    return model


def save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def add_to_logits(model: onnx.ModelProto, nodes: list, out: str) -> None:
    """logits += 0 * mean(`out`): the attack's tensor `out` (made by `nodes`) is on the output's path."""
    g = model.graph
    g.initializer.extend([helper.make_tensor("atk_zero", TensorProto.FLOAT, [], [0.0]),
                          floats("atk_zero3", [0.0] * len(_labels(model)))])
    producer = next(n for n in g.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "atk_logits_pre"
    g.node.extend([*nodes, helper.make_node("ReduceMean", [out], ["atk_mean"], keepdims=0),
                   helper.make_node("Mul", ["atk_mean", "atk_zero"], ["atk_z"]),
                   helper.make_node("Add", ["atk_z", "atk_zero3"], ["atk_c"]),
                   helper.make_node("Add", ["atk_logits_pre", "atk_c"], ["logits"])])


def _labels(model: onnx.ModelProto) -> list:
    import json

    return json.loads(next(p.value for p in model.metadata_props if p.key == "labels"))


def _flat_input(k: int) -> tuple[list, str]:
    """Nodes making a flat float tensor of k * (3*H*W) values from the image."""
    nodes = [helper.make_node("Reshape", ["input", "atk_minus1"], ["atk_flat1"])]
    nodes.append(helper.make_node("Concat", ["atk_flat1"] * k, ["atk_flat"], axis=0))
    return nodes, "atk_flat"


# -- operator swaps and insertions ------------------------------------------------------------------


def op_swap(base, rng, path: Path) -> str:
    model = copy(base)
    at = int(rng.integers(len(model.graph.node)))
    node = model.graph.node[at]
    old = node.op_type
    node.op_type = str(rng.choice([*DISALLOWED, *sorted(ALLOWED)]))
    if rng.random() < 0.2:
        node.domain = str(rng.choice(DOMAINS))
    save(model, path)
    return f"node {at} {old} -> {node.domain}:{node.op_type}"


def _loop(model, rng) -> tuple[list, str, str]:
    trips = log_uniform(rng, 1, 1e12)
    model.graph.initializer.extend([ints("atk_trips", [trips]), helper.make_tensor("atk_true", TensorProto.BOOL, [], [True]),
                                    floats("atk_v0", [0.0, 0.0, 0.0])])
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"]),
         helper.make_node("Identity", ["v_in"], ["scan"])], "body",
        [vi("iter", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("v_in", TensorProto.FLOAT, [3])],
        [vi("cond_out", TensorProto.BOOL, []), vi("v_out", TensorProto.FLOAT, [3]), vi("scan", TensorProto.FLOAT, [3])])
    return [helper.make_node("Loop", ["atk_trips", "atk_true", "atk_v0"], ["atk_last", "atk_big"], body=body)], \
        "atk_big", f"{trips} trips piling up outputs"


def _scan(model, rng) -> tuple[list, str, str]:
    rows = log_uniform(rng, 10, 1e10)
    model.graph.initializer.append(ints("atk_rows", [rows, 3]))
    vi = helper.make_tensor_value_info
    body = helper.make_graph([helper.make_node("Identity", ["row"], ["out"])], "body",
                             [vi("row", TensorProto.FLOAT, [3])], [vi("out", TensorProto.FLOAT, [3])])
    return [helper.make_node("ConstantOfShape", ["atk_rows"], ["atk_rows_t"]),
            helper.make_node("Scan", ["atk_rows_t"], ["atk_big"], body=body, num_scan_inputs=1)], \
        "atk_big", f"{rows} rows"


def _if(model, rng) -> tuple[list, str, str]:
    depth = int(rng.integers(1, PROTOBUF_MAX_IF_DEPTH))
    model.graph.initializer.append(helper.make_tensor("atk_true", TensorProto.BOOL, [], [True]))
    vi = helper.make_tensor_value_info
    leaf = helper.make_graph([helper.make_node("Constant", [], ["atk_leaf"], value=floats("atk_k", [0.0] * 3))],
                             "leaf", [], [vi("atk_leaf", TensorProto.FLOAT, [3])])
    inner = leaf
    for level in range(depth):  # then: one level deeper; else: the leaf (both the same would double each level)
        out = f"atk_if{level}"
        nodes = [helper.make_node("If", ["atk_true"], [out], then_branch=inner, else_branch=leaf)]
        inner = helper.make_graph(nodes, f"g{level}", [], [vi(out, TensorProto.FLOAT, [3])])
    return [helper.make_node("If", ["atk_true"], ["atk_big"], then_branch=inner, else_branch=leaf)], \
        "atk_big", f"{depth} levels deep"


def _einsum(model, rng) -> tuple[list, str, str]:
    k = log_uniform(rng, 1, 1000)
    nodes, flat = _flat_input(k)
    equation = str(rng.choice(["i,j->ij", "...i,...j->...ij", "i,i->i", "...,...->..."]))
    return [*nodes, helper.make_node("Einsum", [flat, flat], ["atk_big"], equation=equation)], \
        "atk_big", f"{equation!r} on {k} copies of the image"


def _grow(op: str):
    def make(model, rng) -> tuple[list, str, str]:
        a, b = log_uniform(rng, 1, 1e6), log_uniform(rng, 1, 1e6)
        g = model.graph
        if op == "ConstantOfShape":
            g.initializer.append(ints("atk_shape", [1, 3, a, b]))
            return [helper.make_node(op, ["atk_shape"], ["atk_big"])], "atk_big", f"shape (1, 3, {a}, {b})"
        if op == "Expand":
            g.initializer.append(ints("atk_shape", [a, 3, 32, 32]))
            return [helper.make_node(op, ["input", "atk_shape"], ["atk_big"])], "atk_big", f"batch to {a}"
        if op == "Tile":
            g.initializer.append(ints("atk_reps", [1, 1, a, b]))
            return [helper.make_node(op, ["input", "atk_reps"], ["atk_big"])], "atk_big", f"repeats ({a}, {b})"
        if op == "Resize":
            scale = float(rng.uniform(1, 1e4))
            g.initializer.append(floats("atk_scales", [1, 1, scale, scale]))
            return [helper.make_node(op, ["input", "", "atk_scales"], ["atk_big"])], "atk_big", f"scale {scale:.0f}"
        pad = log_uniform(rng, 1, 1e6)  # Pad: allowed, sized by an initializer
        mode = str(rng.choice(["constant", "reflect", "edge", "wrap"]))
        g.initializer.append(ints("atk_pads", [0, 0, pad, pad, 0, 0, pad, pad]))
        return [helper.make_node("Pad", ["input", "atk_pads"], ["atk_big"], mode=mode)], "atk_big", f"{mode} pads {pad}"
    return make


INSERTS = {"Loop": _loop, "Scan": _scan, "If": _if, "Einsum": _einsum,
           **{op: _grow(op) for op in ("ConstantOfShape", "Expand", "Tile", "Resize", "Pad")}}


def op_insert(base, rng, path: Path) -> str:
    model = copy(base)
    model.graph.initializer.append(ints("atk_minus1", [-1]))
    op = str(rng.choice(list(INSERTS)))
    nodes, out, what = INSERTS[op](model, rng)
    add_to_logits(model, nodes, out)
    save(model, path)
    return f"{op}: {what}"


def functions(base, rng, path: Path) -> str:
    """Model-local functions, each calling the previous `fan` times, `depth` deep."""
    model = copy(base)
    depth, fan, domain = int(rng.integers(1, 64)), int(rng.integers(1, 4)), str(rng.choice(DOMAINS))
    model.opset_import.append(helper.make_opsetid(domain, 1))
    previous = None
    for level in range(depth):
        if previous is None:
            body = [helper.make_node("Identity", ["x"], ["y"])]
        else:
            names = ["x", *[f"a{i}" for i in range(fan - 1)], "y"]
            body = [helper.make_node(previous, [names[i]], [names[i + 1]], domain=domain) for i in range(fan)]
        model.functions.append(helper.make_function(domain, f"F{level}", ["x"], ["y"], body,
                                                    [helper.make_opsetid("", 20), helper.make_opsetid(domain, 1)]))
        previous = f"F{level}"
    called = rng.random() < 0.8
    if called:
        add_to_logits(model, [helper.make_node(previous, ["input"], ["atk_big"], domain=domain)], "atk_big")
    save(model, path)
    return f"{depth} functions in {domain!r}, each calling the previous {fan}x, {'called' if called else 'unused'}"


# -- integer division: constant, shape-derived, and disguised as float ------------------------------


def _div_case(model, variant: str, rng) -> tuple[list, str]:
    """Nodes computing an integer quotient `atk_q` that would trap (SIGFPE) on x86."""
    g, k = model.graph, int(rng.integers(1, 1000))
    minimum = INT32_MIN if variant == "const-int32" else INT64_MIN
    dtype = TensorProto.INT32 if variant == "const-int32" else TensorProto.INT64
    g.initializer.extend([ints("atk_big", [minimum] * k, dtype), ints("atk_m1", [-1], dtype), ints("atk_0", [0], dtype)])
    div = lambda a, b: helper.make_node("Div", [a, b], ["atk_q"])  # noqa: E731
    if variant in ("const-int64", "const-int32"):
        return [div("atk_big", "atk_m1")], f"{k} x INT_MIN / -1"
    if variant == "by-zero":
        return [div("atk_big", "atk_0")], "INT64_MIN / 0"
    if variant == "shape-derived":  # -1 from the input's shape: 3 / -2 truncates to -1
        g.initializer.append(ints("atk_m2", [-2]))
        return [helper.make_node("Shape", ["input"], ["atk_s"], start=1, end=2),
                helper.make_node("Div", ["atk_s", "atk_m2"], ["atk_m"]), div("atk_big", "atk_m")], "shape-derived -1"
    if variant == "float-name-twin":  # a float initializer with the integer's name
        g.initializer.append(floats("atk_big", [1.0]))
        return [div("atk_big", "atk_m1")], "duplicate initializer name, one float"
    if variant == "float-input-twin":  # a float graph input with the integer initializer's name
        g.input.append(helper.make_tensor_value_info("atk_big", TensorProto.FLOAT, [k]))
        return [div("atk_big", "atk_m1")], "graph input float, initializer int64"
    if variant == "mixed-types":
        g.initializer.append(floats("atk_one", [1.0]))
        return [div("atk_big", "atk_one")], "int64 / float"
    if variant == "constant-ints":
        return [helper.make_node("Constant", [], ["atk_c"], value_ints=[INT64_MIN]), div("atk_c", "atk_m1")], \
            "Constant value_ints / -1"
    # Int64 tensors from a float-input operator's second output: MaxPool's indices.
    nodes = [helper.make_node("MaxPool", ["input"], ["atk_pool", "atk_idx"], kernel_shape=[2, 2]),
             helper.make_node("Sub", ["atk_idx", "atk_idx"], ["atk_zeros"])]
    if variant == "maxpool-indices-by-zero":
        return [*nodes, div("atk_idx", "atk_zeros")], "MaxPool indices / (indices - indices)"
    g.initializer.append(ints("atk_min1", [minimum]))  # one element: broadcasts against the indices
    nodes += [helper.make_node("Add", ["atk_zeros", "atk_min1"], ["atk_min"]),
              helper.make_node("Add", ["atk_zeros", "atk_m1"], ["atk_mone"])]
    return [*nodes, div("atk_min", "atk_mone")], "(0 * indices + INT64_MIN) / (0 * indices - 1)"


DIV_VARIANTS = ("const-int64", "const-int32", "by-zero", "shape-derived", "float-name-twin", "float-input-twin",
                "mixed-types", "constant-ints", "maxpool-indices-by-zero", "maxpool-indices-min-by-minus-1")


def int_div(base, rng, path: Path) -> str:
    model = copy(base)
    variant = str(rng.choice(DIV_VARIANTS))
    nodes, what = _div_case(model, variant, rng)
    nodes.append(helper.make_node("Cast", ["atk_q"], ["atk_qf"], to=TensorProto.FLOAT))
    add_to_logits(model, nodes, "atk_qf")
    save(model, path)
    return f"{variant}: {what}"


# -- shape-driven allocations from allowed operators ------------------------------------------------


def outer_product(base, rng, path: Path) -> str:
    """An (n, n) tensor from allowed operators: MatMul, Gemm or a broadcast Add/Mul of (n, 1) and
    (1, n), from a zero initializer of n floats or from k copies of the image (n = 3*H*W*k)."""
    model = copy(base)
    g = model.graph
    g.initializer.append(ints("atk_minus1", [-1]))
    if rng.random() < 0.5:
        n = log_uniform(rng, 100, 4e6)
        g.initializer.append(helper.make_tensor("atk_vec", TensorProto.FLOAT, [n], np.zeros(n, np.float32)))
        nodes, vec, source = [], "atk_vec", f"initializer n={n}"
    else:
        k = log_uniform(rng, 1, 1000)
        nodes, vec = _flat_input(k)
        source = f"image x{k}"
    g.initializer.extend([ints("atk_col", [-1, 1]), ints("atk_row", [1, -1])])
    nodes += [helper.make_node("Reshape", [vec, "atk_col"], ["atk_a"]),
              helper.make_node("Reshape", [vec, "atk_row"], ["atk_b"])]
    op = str(rng.choice(["MatMul", "Gemm", "Add", "Mul"]))
    nodes.append(helper.make_node(op, ["atk_a", "atk_b"], ["atk_big"]))
    add_to_logits(model, nodes, "atk_big")
    save(model, path)
    return f"{op} outer product, {source}"


# -- huge strings -----------------------------------------------------------------------------------


def field(number: int, length: int) -> bytes:
    """The key and length of a length-delimited protobuf field whose payload follows."""
    return varint(number << 3 | 2) + varint(length)


# Where a string lives, as the path of (field number) from ModelProto down to the string itself.
STRING_PLACES = {"model doc_string": (6,), "producer_name": (2,), "graph name": (7, 2), "node name": (7, 1, 3),
                 "node doc_string": (7, 1, 6), "metadata key": (14, 1), "metadata value": (14, 2),
                 "initializer name": (7, 5, 8)}


def huge_string(base, rng, path: Path) -> str:
    """The real model, then one more field holding a string of 1 MiB to 1 GiB (protobuf merges a
    repeated singular message), written sparse (zeros) or streamed (a repeated letter)."""
    place = str(rng.choice(list(STRING_PLACES)))
    size = log_uniform(rng, MIB * 0.99, 1 << 30)
    sparse = rng.random() < 0.7
    header = b""
    length = size
    for number in reversed(STRING_PLACES[place]):
        header = field(number, length) + header
        length += len(field(number, length))
    with open(path, "wb") as f:
        f.write(base.SerializeToString())
        f.write(header)
        if sparse:
            f.truncate(f.tell() + size)
        else:
            chunk = b"x" * CHUNK
            for done in range(0, size, CHUNK):
                f.write(chunk[:min(CHUNK, size - done)])
    return f"{place}: {size:,} bytes {'sparse zeros' if sparse else 'streamed'}"


# -- contract sizes beyond the bounds ---------------------------------------------------------------


def contract(base, rng, path: Path) -> str:
    """Resize/crop beyond 4096 (or odd types), a fixed batch beyond 1024, or both within bounds
    but over the 1 GiB input bound, or a side at the bound with the input dims to match."""
    import json

    model = copy(base)
    meta = next(p for p in model.metadata_props if p.key == "preprocess")
    pre = json.loads(meta.value)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    what = str(rng.choice(["side", "batch", "both", "side-matching-input"]))
    hostile = [0, -1, 4097, log_uniform(rng, 4097, 2**63), 2**63, 1e300, 4096.5, "4096", True, None]
    if what in ("side", "both"):
        key = str(rng.choice(["resize", "crop"]))
        pre[key] = hostile[int(rng.integers(len(hostile)))]
    if what in ("batch", "both"):
        batch = int(rng.choice([0, -1, 1025, log_uniform(rng, 1025, 2**62), log_uniform(rng, 1, 1024)]))
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = batch
        what += f" batch={batch}"
    if what == "side-matching-input":
        side = log_uniform(rng, 33, 4096)
        pre["resize"] = pre["crop"] = side
        dims[2].dim_value = dims[3].dim_value = side
        what += f" {side}"
    meta.value = json.dumps(pre)
    save(model, path)
    return f"{what}: resize={pre['resize']!r:.30} crop={pre['crop']!r:.30}"


CLASSES = {"op-swap": op_swap, "op-insert": op_insert, "functions": functions, "int-div": int_div,
           "outer-product": outer_product, "huge-string": huge_string, "contract": contract}
