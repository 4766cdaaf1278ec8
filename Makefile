# Each target does all set-up it needs on a fresh machine: the virtual environment,
# the dependencies, and the compiled extension (CUDA kernels too when nvcc is present).
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.mlic-installed
export MAX_JOBS ?= 2

.PHONY: setup build test demo bench clean

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip setuptools wheel
	$(VPY) -m pip install -r requirements.txt
	$(VPY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Incremental (ninja): a no-op when nothing changed.
build: setup
	$(VPY) setup.py -q build_ext --inplace

test: build
	$(VPY) -m pytest tests $(PYTEST_ARGS)

demo: build
	$(VPY) tools/demo.py $(DEMO_ARGS)

bench: build
	$(VPY) bench/kernels.py

clean:
	rm -rf build mlic/_C*.so *.egg-info
