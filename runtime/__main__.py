"""`python -m alexnet_onnx.runtime ...` is `onnx-predict ...`."""

from .cli import entry

entry()
