"""`python -m alexnet_onnx.train ...` is `train-alexnet ...` (what torchrun launches: `torchrun
--nproc_per_node=N -m alexnet_onnx.train ...`)."""

from .cli import main

main()
