# make test  - create .venv, install .[train,cluster,serve,dev], run the test suite (what CI runs)
# make demo  - train alexnet_cifar briefly on CIFAR-10, export to ONNX with the parity report,
#              classify a few test images and evaluate the exported model
# make bench - the benchmark scripts (not part of make test) for CKPT=...; bench-camera / bench-hostile / bench-cluster alone
# make bench-cifar10 - the full-scale CIFAR-10 run (interrupted once, resumed) and every accuracy figure of docs/results.md
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where CIFAR-10 lives: cifar-10-batches-py/, or an ImageFolder with train/ and test/.
# Empty folder + internet: torchvision downloads it there.
ALEXNET_DATA_DIR ?= data/cifar10
DEMO_OUT ?= artifacts/demo
DEMO_EPOCHS ?= 4
DEMO_LIMIT ?= 2500

.PHONY: test demo bench bench-camera bench-hostile bench-cluster bench-serve bench-cifar10 install clean

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,cluster,serve,dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/train-alexnet --dataset cifar10 --data-dir "$(ALEXNET_DATA_DIR)" --arch alexnet_cifar \
		--epochs $(DEMO_EPOCHS) --limit-train $(DEMO_LIMIT) --val-fraction 0.02 --out $(DEMO_OUT)
	$(BIN)/export-onnx $(DEMO_OUT)/best.pt -o $(DEMO_OUT)/model.onnx --report $(DEMO_OUT)/parity.json --force
	$(BIN)/python -m alexnet_onnx.train.demo_images --data-dir "$(ALEXNET_DATA_DIR)" --out $(DEMO_OUT)/test-images
	$(BIN)/onnx-predict -m $(DEMO_OUT)/model.onnx --top-k 3 $$(cat $(DEMO_OUT)/test-images/samples.txt)
	$(BIN)/onnx-predict -m $(DEMO_OUT)/model.onnx --eval "$$(cat $(DEMO_OUT)/test-images/root.txt)"
	@echo "artifacts: $(DEMO_OUT)/ (best.pt last.pt metrics.json curves.png model.onnx parity.json)"

# Measures a checkpoint's variants, cold start and folder throughput. CKPT: any train-alexnet
# checkpoint (default: make demo's); VERIFY: labeled ImageFolder it is checked and timed on.
# e.g. make bench CKPT=artifacts/cifar10-cpu/best.pt VERIFY=../shared/data/cifar10/test
CKPT ?= $(DEMO_OUT)/best.pt
BENCH ?= $(dir $(CKPT))bench
VERIFY ?= $$(cat $(DEMO_OUT)/test-images/root.txt)
IMAGE ?= $$(find $(VERIFY) -type f -name '*.*' | sort | head -1)
bench: install
	$(BIN)/export-onnx $(CKPT) -o $(BENCH)/model.onnx --quantize all --force \
		--verify-dir "$(VERIFY)" --verify-size 2000
	$(BIN)/python benchmarks/variant_latency.py $(BENCH)/model.onnx $(BENCH)/model.int8.onnx $(BENCH)/model.fp16.onnx
	$(BIN)/onnx-bench $(BENCH)/model.onnx $(BENCH)/model.int8.onnx $(BENCH)/model.fp16.onnx --image "$(IMAGE)"
	$(BIN)/python benchmarks/predict_cold_start.py --checkpoint $(CKPT) \
		--model $(BENCH)/model.onnx --model $(BENCH)/model.int8.onnx --image "$(IMAGE)"
	$(BIN)/python benchmarks/predict_throughput.py --dir "$(VERIFY)" \
		--model $(BENCH)/model.onnx --model $(BENCH)/model.int8.onnx --limit 2000
	$(MAKE) bench-camera bench-hostile bench-cluster

# 20-60 min of training on 2 CPU cores with bf16, then 10-20 min measuring; see the script's docstring.
bench-cifar10: install
	$(BIN)/python benchmarks/cifar10_full_run.py --data-dir "$(ALEXNET_DATA_DIR)"

# Camera-size photos, exact vs fast decoding. MODEL: a trained 224-px model for meaningful
# agreement figures (e.g. MODEL=artifacts/fl/flowers.onnx; the demo's 32-px model works too).
MODEL ?= $(BENCH)/model.onnx
PHOTOS ?= ../shared/data/flowers/train
CAMERA ?= artifacts/camera
bench-camera: install
	$(BIN)/python benchmarks/camera_photos.py --src $(PHOTOS) --out $(CAMERA) --per-class 40
	$(BIN)/python benchmarks/decode_agreement.py --model $(MODEL) --dir $(CAMERA)/12mp --dir $(CAMERA)/2mp
	$(BIN)/python benchmarks/predict_throughput.py --dir $(CAMERA)/12mp --model $(MODEL) \
		--decode exact --decode fast --limit 200 --repeats 1
	$(BIN)/python benchmarks/predict_cold_start.py --no-torch --model $(MODEL) --decode exact --decode fast \
		--image "$$(find $(CAMERA)/12mp -name '*.jpg' | sort | head -1)" --repeats 7

# Hostile model files (mutations of MODEL) and the deepest images the policy allows.
bench-hostile: install
	$(BIN)/python benchmarks/fuzz_modelfile.py --model $(MODEL) \
		--image "$$(find $(CAMERA)/2mp -name '*.jpg' | sort | head -1)" --cases 2000 --cli-every 10 --attack-seconds 600
	$(BIN)/python benchmarks/deep_images.py --model $(MODEL)

# onnx-predict --ray local vs plain onnx-predict on the same photos; the driver's own rates.
bench-cluster: install
	$(BIN)/python benchmarks/cluster_throughput.py --model $(MODEL) --dir $(PHOTOS) --limit 1800

# onnx-serve under load over loopback, beside the folder run, a tutorial service and --max-batch 1
# (docs/serving.md); about 5 min a model. SERVE_MODELS: e.g. "m.onnx m.int8.onnx".
SERVE_MODELS ?= $(MODEL)
bench-serve: install
	$(BIN)/python benchmarks/serve_load.py --dir $(PHOTOS) $(foreach m,$(SERVE_MODELS),--model $(m)) --limit 1000

clean:
	rm -rf $(VENV) build *.egg-info
