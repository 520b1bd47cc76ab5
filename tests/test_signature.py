"""A model's declared inputs and outputs checked against its contract (runtime/signature.py)."""

from dataclasses import dataclass

import numpy as np
import pytest

from alexnet_onnx.runtime.signature import Signature, SignatureError, check_signature

CROP, CLASSES = 8, 3


@dataclass
class Port:
    """An input or output as onnxruntime describes one."""

    name: str
    type: str
    shape: list


def image_in(shape=("N", 3, CROP, CROP), type="tensor(float)"):
    return Port("images", type, list(shape))


def logits_out(shape=("N", CLASSES), type="tensor(float)"):
    return Port("logits", type, list(shape))


def check(inputs, outputs):
    return check_signature(inputs, outputs, crop=CROP, num_classes=CLASSES)


def test_a_fitting_model_says_how_to_call_it():
    assert check([image_in()], [logits_out()]) == Signature("images", "logits", np.float32, None, True)


@pytest.mark.parametrize("batch,expected", [(None, None), ("batch", None), (1, 1), (4, 4)])
def test_a_fixed_batch_size_is_kept_and_an_open_one_is_none(batch, expected):
    sig = check([image_in((batch, 3, CROP, CROP))], [logits_out((batch, CLASSES))])
    assert sig.fixed_batch == expected


def test_half_precision_input_is_fed_as_float16_and_any_float_output_is_read():
    sig = check([image_in(type="tensor(float16)")], [logits_out(type="tensor(double)")])
    assert sig.input_dtype is np.float16


def test_an_open_class_count_is_left_to_a_first_run():
    assert check([image_in()], [logits_out(("N", "classes"))]).classes_declared is False


def test_extra_outputs_are_ignored_and_the_first_is_read():
    sig = check([image_in()], [logits_out(), Port("features", "tensor(float)", ["N", 4096])])
    assert sig.output_name == "logits"


@pytest.mark.parametrize(
    "inputs,outputs,message",
    [
        ([image_in(), image_in()], [logits_out()], "expected one input and one output, found 2 and 1"),
        ([image_in()], [], "expected one input and one output, found 1 and 0"),
        ([image_in(type="tensor(uint8)")], [logits_out()], r"input .images. is tensor\(uint8\); expected tensor\(float\)"),
        ([image_in()], [logits_out(type="tensor(string)")], r"output .logits. is tensor\(string\); expected a float"),
        ([image_in(("N", 3, CROP))], [logits_out()], r"input shape \['N', 3, 8\] does not match the contract \(batch, 3, 8, 8\)"),
        ([image_in(("N", 3, CROP + 1, CROP + 1))], [logits_out()], "input shape"),
        ([image_in(("N", 1, CROP, CROP))], [logits_out()], "input shape"),
        ([image_in(("N", CROP, CROP, 3))], [logits_out()], "input shape"),  # channels last
        ([image_in()], [logits_out(("N", CLASSES + 1))], r"output shape \['N', 4\] does not match the contract's 3 labels"),
        ([image_in()], [logits_out(("N", 1, CLASSES))], "output shape"),
        ([image_in()], [logits_out(("N",))], "output shape"),
        ([image_in((0, 3, CROP, CROP))], [logits_out()], "input batch dimension is 0"),
        ([image_in((4, 3, CROP, CROP))], [logits_out((1, CLASSES))], "output batch dimension 1 differs from the input's 4"),
    ],
    ids=["two-inputs", "no-output", "int-input", "string-output", "rank-3-input", "wrong-crop", "one-channel",
         "channels-last", "label-count", "rank-3-output", "rank-1-output", "batch-0", "batch-mismatch"],
)
def test_a_model_that_does_not_fit_its_contract_is_refused_with_the_reason(inputs, outputs, message):
    with pytest.raises(SignatureError, match=message) as info:
        check(inputs, outputs)
    assert "\n" not in str(info.value)


def test_onnxruntime_ports_are_checked_as_they_come():
    pytest.importorskip("onnx", reason="the model is built with onnx ([train]/[dev] extras)")
    from onnx import TensorProto, helper

    from alexnet_onnx.runtime.session import create_session

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0)], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, CROP, CROP])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", CLASSES])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = create_session(model.SerializeToString(), threads=1)
    assert check(session.get_inputs(), session.get_outputs()) == Signature("images", "pooled", np.float32, None, True)
    with pytest.raises(SignatureError, match="does not match the contract's 4 labels"):
        check_signature(session.get_inputs(), session.get_outputs(), crop=CROP, num_classes=4)
