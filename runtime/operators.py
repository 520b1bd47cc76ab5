"""The operators a model may use, checked on the protobuf before onnxruntime sees the model.

A classifier needs a small, fixed set of operators: what export-onnx writes (fp32, QDQ int8 and
fp16) plus what a user's own image classifier reasonably has. Everything else is refused with
one line (exit 3): control flow (If, Loop, Scan), model-local functions and subgraphs, Einsum,
operators that size a tensor from run-time values (Shape, ConstantOfShape, Expand, Tile, Resize,
NonZero...), integer Div and Mod, and Cast to anything but a float type. With those gone a
model's run time is a fixed sequence of kernels over tensors whose sizes are known when the
session is built: it cannot loop, hang its own build, divide integers by zero or by -1 (SIGFPE),
or grow a tensor from the image. docs/security.md lists the operators and how to ask for more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protowalk import Walker

# Default ONNX domain ("" or "ai.onnx"). Div is allowed on float tensors only (see `_check_div`).
ALLOWED = frozenset({
    # export-onnx: fp32, int8 (QDQ), fp16
    "Add", "AveragePool", "BatchNormalization", "Cast", "Conv", "DequantizeLinear", "Div", "Gemm", "MaxPool",
    "QuantizeLinear", "Relu", "Reshape", "Slice",
    # what other image classifiers have
    "Abs", "Clip", "Concat", "Constant", "Dropout", "Elu", "Erf", "Exp", "Flatten", "Gelu", "GlobalAveragePool",
    "GlobalMaxPool", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "LRN", "LayerNormalization",
    "LeakyRelu", "Log", "LogSoftmax", "MatMul", "Max", "Mean", "Min", "Mish", "Mul", "Neg", "Pad", "PRelu",
    "QLinearConv", "QLinearMatMul", "Reciprocal", "ReduceMean", "Selu", "Sigmoid", "Softmax", "Softplus", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose", "Unsqueeze",
})
# onnxruntime's quantized operators (quantize_static with QuantFormat.QOperator).
ALLOWED_MICROSOFT = frozenset({
    "QLinearAdd", "QLinearAveragePool", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearLeakyRelu",
    "QLinearMul", "QLinearSigmoid", "QLinearSoftmax", "QuantizeLinear", "DequantizeLinear",
})
DOMAINS = {b"": ALLOWED, b"ai.onnx": ALLOWED, b"com.microsoft": ALLOWED_MICROSOFT}
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Outputs of these are never float, whatever their inputs.
_INTEGER_OUT = frozenset({"QuantizeLinear", "QLinearConv", "QLinearMatMul", *ALLOWED_MICROSOFT} - {"DequantizeLinear"})
# Data-type propagation passes: an exporter lists nodes in order, so one pass settles them; a few
# more forgive an unsorted graph without letting a crafted one cost more than that.
_PASSES = 4

# onnx.proto field numbers
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT = 1, 5, 11
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 4, 5, 7
_ATTR_NAME, _ATTR_I, _ATTR_T, _ATTR_G, _ATTR_GRAPHS = 1, 3, 5, 6, 11
_TENSOR_DATA_TYPE, _TENSOR_NAME = 2, 8
_VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_TYPE_ELEM = 1, 2, 1, 1


class Refused(Exception):
    """The model uses something outside the allow-list; the message says what."""


@dataclass
class _Node:
    op: str
    inputs: list[bytes] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)
    cast_to: int | None = None
    constant_type: int | None = None


def check_operators(buf) -> None:
    """Refuse (Refused, one line) a model outside the allow-list; `buf` has passed `scan_model`."""
    walker = Walker(buf)
    nodes: list[_Node] = []
    floats: set[bytes] = set()
    if any(number == _MODEL_FUNCTIONS for number, *_ in walker.fields(0, len(buf))):
        raise Refused("defines its own functions; only standard operators are allowed")
    for number, _, value, _, _ in walker.fields(0, len(buf)):
        if number == _MODEL_GRAPH:
            _graph(walker, value, nodes, floats)
    for node in nodes:
        if node.op == "Cast" and node.cast_to not in FLOAT_TYPES:
            raise Refused(f"casts to data type {node.cast_to}; only casts between float types are allowed")
    _propagate_floats(nodes, floats)
    for node in nodes:
        if node.op == "Div" and not any(name in floats for name in node.inputs):
            raise Refused("divides tensors that are not known to be float (integer division is not allowed)")


def _graph(walker: Walker, span, nodes: list[_Node], floats: set[bytes]) -> None:
    buf = walker.buf
    for number, wire, value, _, _ in walker.fields(*span):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            nodes.append(_node(walker, value))
        elif number == _GRAPH_INITIALIZER:
            name, dtype = _tensor_type(walker, value)
            if dtype in FLOAT_TYPES:
                floats.add(name)
        elif number == _GRAPH_INPUT:
            name, elem = b"", None
            for vnum, vwire, vvalue, _, _ in walker.fields(*value):
                if vnum == _VALUE_NAME and vwire == 2:
                    name = bytes(buf[vvalue[0]:vvalue[1]])
                elif vnum == _VALUE_TYPE and vwire == 2:
                    elem = _elem_type(walker, vvalue)
            if elem in FLOAT_TYPES:
                floats.add(name)


def _node(walker: Walker, span) -> _Node:
    buf = walker.buf
    op = domain = b""
    node = _Node("")
    attributes = []
    for number, wire, value, _, _ in walker.fields(*span):
        if wire != 2:
            continue
        text = bytes(buf[value[0]:value[1]]) if number != _NODE_ATTRIBUTE else b""
        if number == _NODE_INPUT:
            node.inputs.append(text)
        elif number == _NODE_OUTPUT:
            node.outputs.append(text)
        elif number == _NODE_OP_TYPE:
            op = text
        elif number == _NODE_DOMAIN:
            domain = text
        elif number == _NODE_ATTRIBUTE:
            attributes.append(value)
    allowed = DOMAINS.get(domain, frozenset())
    node.op = op.decode("utf-8", "replace")
    if node.op not in allowed:
        where = f" (domain {domain.decode('utf-8', 'replace')!r})" if domain else ""
        raise Refused(f"uses operator {node.op[:80]!r}{where}, which is not on the allow-list of classifier operators")
    for attribute in attributes:
        _attribute(walker, attribute, node)
    return node


def _attribute(walker: Walker, span, node: _Node) -> None:
    buf = walker.buf
    name, i, tensor = b"", None, None
    for number, wire, value, _, _ in walker.fields(*span):
        if number in (_ATTR_G, _ATTR_GRAPHS):
            raise Refused(f"operator {node.op!r} carries a subgraph; subgraphs are not allowed")
        if number == _ATTR_NAME and wire == 2:
            name = bytes(buf[value[0]:value[1]])
        elif number == _ATTR_I and wire == 0:
            i = value
        elif number == _ATTR_T and wire == 2:
            tensor = value
    if node.op == "Cast" and name == b"to":
        node.cast_to = i
    elif node.op == "Constant":
        if name == b"value" and tensor is not None:
            node.constant_type = _tensor_type(walker, tensor)[1]
        elif name in (b"value_float", b"value_floats"):
            node.constant_type = 1


def _tensor_type(walker: Walker, span) -> tuple[bytes, int | None]:
    name, dtype = b"", None
    for number, wire, value, _, _ in walker.fields(*span):
        if number == _TENSOR_DATA_TYPE and wire == 0:
            dtype = value
        elif number == _TENSOR_NAME and wire == 2:
            name = bytes(walker.buf[value[0]:value[1]])
    return name, dtype


def _elem_type(walker: Walker, span) -> int | None:
    for number, wire, value, _, _ in walker.fields(*span):
        if number == _TYPE_TENSOR and wire == 2:
            for tnum, twire, tvalue, _, _ in walker.fields(*value):
                if tnum == _TENSOR_TYPE_ELEM and twire == 0:
                    return tvalue
    return None


def _propagate_floats(nodes: list[_Node], floats: set[bytes]) -> None:
    """Add to `floats` every node output known to be float: a float Constant, a Cast (to a float
    type, as checked), a DequantizeLinear, and any other operator's first output when its first
    input is (an allowed operator's first output has its first input's type, or is never float;
    later outputs may be integers, except Split's)."""
    for _ in range(_PASSES):
        before = len(floats)
        for node in nodes:
            if node.op in _INTEGER_OUT:
                continue
            if node.op == "Constant":
                known = node.constant_type in FLOAT_TYPES
            elif node.op in ("Cast", "DequantizeLinear"):
                known = True
            else:
                known = bool(node.inputs) and node.inputs[0] in floats
            if known:  # only the first output: MaxPool's second is int64 indices, Dropout's a bool mask
                floats.update(node.outputs if node.op == "Split" else node.outputs[:1])
        if len(floats) == before:
            return

