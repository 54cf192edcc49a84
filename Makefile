# corx: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= net,serve,baselines,dicom,dev
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

GPU_OUT ?= gpu_out
GPU_WHEELS := monai==1.6.1 nibabel==5.4.2 pytorch-ignite==0.5.5

.PHONY: install weights demo test lint bench clean gpu-wheels train-gpu

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned: on a CPU machine this takes the CPU wheel, not GBs of CUDA packages.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# Weights kept in git history, not in the working tree (bundle/weights_history.json); checked by sha256.
weights: $(STAMP)
	$(BIN)/python -m corx_bundle.scripts.restore_weights

demo: $(STAMP)
	$(BIN)/corx demo --out $(DEMO_OUT) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The suite runs on TEST_WORKERS pytest-xdist processes (whole files per worker, so module fixtures are built once),
# one torch thread each: 2 cores are shared by two workers, not oversubscribed (743 s vs 1019 s in one process).
TEST_WORKERS ?= 2
test: weights
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	BUILD_PYTHON=$(BIN)/python PYTHON=$(PYTHON) bash tests/wheel_check.sh
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: weights
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The GPU machine has torch only: fetch the pure-Python wheels it also needs into .whl/ (carried by the device tool).
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

# One call on a GPU machine (see bundle/scripts/train_gpu.py): phantom, training for MINUTES, weights in pieces.
MINUTES ?= 9
VARIANTS ?= corx
train-gpu:
	OUT=$${OUT:-$(GPU_OUT)} bash bundle/scripts/train_gpu.sh --minutes $(MINUTES) --variants $(VARIANTS)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
