"""PyTorch model -> one self-contained ONNX model with the contract in its metadata."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from alexnet_onnx.runtime.contract import GATE_METRIC, Contract

from alexnet_onnx.train.checkpoint import load_checkpoint
from alexnet_onnx.train.evaluation import shipped_from_checkpoint

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def model_from_checkpoint(path: Path) -> tuple[nn.Module, Contract, dict]:
    """(eval-mode shipped model, contract, checkpoint) from a train-alexnet checkpoint."""
    ckpt = load_checkpoint(path)
    model, contract, _ = shipped_from_checkpoint(ckpt, path)
    return model, contract, ckpt


def to_onnx(model: nn.Module, contract: Contract) -> onnx.ModelProto:
    """Export with the dynamo exporter: fixed HxW, dynamic batch, single file, contract in
    metadata_props, checked with onnx.checker (full_check)."""
    import onnx

    crop = contract.preprocess.crop
    sample = torch.randn(2, 3, crop, crop)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (sample,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    strip_export_traces(proto.graph)
    pretranspose_gemm_weights(proto.graph)
    set_contract(proto, contract)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def strip_export_traces(graph) -> None:
    """Drop what the exporter records per node and value for debugging (source file paths and
    lines of the exporting machine, module names, FX nodes): a shipped model should not carry the
    exporter's home directory, and onnxruntime reads none of it."""
    for items in (graph.node, graph.value_info, graph.input, graph.output, graph.initializer):
        for item in items:
            if hasattr(item, "metadata_props"):
                del item.metadata_props[:]
            item.doc_string = ""
    if hasattr(graph, "metadata_props"):
        del graph.metadata_props[:]


def pretranspose_gemm_weights(graph) -> None:
    """Store each constant Gemm weight as (in, out) with transB=0 instead of PyTorch's (out, in)
    with transB=1: the same product. onnxruntime packs a transposed B on every call when weights
    are not pre-packed (what onnx-predict does for a few images), several times the cost of the
    product itself (docs/performance.md)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # a subgraph may read a weight too: leave such models as they are
    initializers = {t.name: t for t in graph.initializer}
    # Graph outputs, and inputs a caller could feed instead, are uses the Gemm cannot see.
    uses: dict[str, int] = {v.name: 1 for v in [*graph.output, *graph.input]}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        trans_b = next((a for a in node.attribute if a.name == "transB"), None)
        if weight is None or trans_b is None or trans_b.i != 1 or uses[node.input[1]] != 1:
            continue
        array = numpy_helper.to_array(weight)
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array.T), weight.name))
        trans_b.i = 0
        for info in graph.value_info:  # a shape recorded for the weight, if any
            if info.name == weight.name:
                shape = info.type.tensor_type.shape
                del shape.dim[:]
                for size in array.T.shape:
                    shape.dim.add().dim_value = size


def set_contract(proto, contract: Contract) -> None:
    import onnx

    # set_model_props replaces every prop: the contract is the whole of metadata_props.
    onnx.helper.set_model_props(proto, contract.to_metadata())
    proto.producer_name = "alexnet-onnx"
    proto.doc_string = f"{contract.arch} trained on {contract.dataset}; labels: {', '.join(contract.labels)}"


def with_contract(data: bytes, contract: Contract) -> bytes:
    """A serialized model with `contract` as its metadata (the graph untouched), checked again."""
    import onnx

    proto = onnx.load_from_string(data)
    set_contract(proto, contract)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def with_gate_record(data: bytes, record: dict) -> bytes:
    """`data` with its parity gate's verdict in the contract's metrics (what onnx-bench picks by)."""
    import onnx

    proto = onnx.load_from_string(data)
    contract = Contract.from_metadata({p.key: p.value for p in proto.metadata_props})
    return with_contract(data, contract.with_(metrics={**contract.metrics, GATE_METRIC: record}))
