"""`python -m alexnet_onnx.export ...` is `export-onnx ...`."""

from .cli import main

main()
