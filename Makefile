# The two set-up commands of the README. Both create .venv if missing and install into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.visionzoo-installed

.PHONY: demo test test-extended hub-configs gpu-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# Train a small ECA-ResNet from scratch on the embedded digits (no download), then validate it.
# One compute thread plus one loader process: the two cores, without oversubscription.
DEMO_MODEL := --model eca_resnet18 --model-kwargs "depths=(1,1,1,1)" "widths=(16,32,64,128)" stem_width=16
demo: $(STAMP)
	rm -rf output/demo
	OMP_NUM_THREADS=1 $(PY) train.py --dataset digits $(DEMO_MODEL) --img-size 32 --epochs 20 -b 64 -j 1 \
		--opt adamw --lr 3e-3 --weight-decay 0.05 --warmup-epochs 1 --scale 0.6 1 --hflip 0 --color-jitter 0 \
		--output output --experiment demo
	OMP_NUM_THREADS=1 $(PY) validate.py --dataset digits --checkpoint output/demo/last.pth.tar -j 1

test: $(STAMP)
	$(PY) -m pytest -n 2 --timeout 900 --durations 25 tests

test-extended: $(STAMP)
	VISIONZOO_EXTENDED_TESTS=1 $(PY) -m pytest -n 2 tests

# Every Triton kernel against its reference on the GPU (fp32/fp16/bf16, forward and backward), timed against
# dense SDPA and the plain formulation, plus whole-model img/s; without CUDA: the interpreter checks only.
GPU_CHECK_OUT ?= benchmarks/results
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

hub-configs: $(STAMP)
	$(PY) -m visionzoo.hub export hub_configs/
