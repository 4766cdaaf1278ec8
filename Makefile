# Each target does all set-up it needs on a fresh machine: the virtual environment,
# the dependencies, and the compiled extension (CUDA kernels too when nvcc is present).
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.mlic-installed
export MAX_JOBS ?= 2

.PHONY: setup build test demo study bench readme-check sanitize gpu-check clean

# Set-up and build print a line per step; pip's and the compiler's output goes to a log
# (VERBOSE=1: to the console), whose end is shown when a step fails.
LOG_DIR ?= build
SETUP_LOG := $(LOG_DIR)/setup.log
BUILD_LOG := $(LOG_DIR)/build.log
logged = $(if $(VERBOSE),$(1),{ $(1) ; } >>$(2) 2>&1 || { echo "[make] failed: $(strip $(1))"; \
	echo "--- the end of $(2):"; tail -n 40 $(2); echo "--- the whole output is in $(2)"; exit 1; })

# The package is installed without compiling (MLIC_SKIP_EXTENSION=1): `build` compiles the
# extension once, in place, and incrementally (ninja) afterwards.
$(STAMP): requirements.txt setup.py
	@mkdir -p $(LOG_DIR) && : > $(SETUP_LOG)
	@echo "[setup] a virtual environment in $(VENV) with the packages of requirements.txt (the first time: minutes, and about 6 GB with the CUDA build of torch); pip's output: $(SETUP_LOG)"
	@$(call logged,$(PYTHON) -m venv $(VENV),$(SETUP_LOG))
	@echo "[setup] pip, setuptools, wheel"
	@$(call logged,$(VPY) -m pip install --upgrade pip setuptools wheel,$(SETUP_LOG))
	@echo "[setup] requirements.txt"
	@$(call logged,$(VPY) -m pip install -r requirements.txt,$(SETUP_LOG))
	@echo "[setup] mlic itself, editable (compiled by the build step)"
	@$(call logged,MLIC_SKIP_EXTENSION=1 $(VPY) -m pip install --no-build-isolation --no-deps -e .,$(SETUP_LOG))
	@touch $(STAMP)

setup: $(STAMP)

build: setup
	@mkdir -p $(LOG_DIR) && : > $(BUILD_LOG)
	@echo "[build] the extension mlic._C: C++ kernels, and CUDA kernels when nvcc is found (those take many minutes the first time; MLIC_CPU_ONLY=1 skips them); compiler output: $(BUILD_LOG)"
	@start=$$(date +%s); $(call logged,$(VPY) setup.py -q build_ext --inplace,$(BUILD_LOG)); \
	sed -n 's/^mlic: building/[build] built/p' $(BUILD_LOG); \
	echo "[build] done in $$(( $$(date +%s) - start )) s"

test: build
	$(VPY) -m pytest tests $(PYTEST_ARGS)

demo: build
	$(VPY) tools/demo.py $(DEMO_ARGS)

# The distillation study (docs/study.md): does the teacher help beyond the training
# budget? The default is the README's demo table and docs/study.md's decision (10 seeds,
# the arms that decide it, the budget sweep; about 3.5 hours on 2 idle cores); rerunning
# resumes. The large preset's: STUDY_ARGS="--preset large --seeds 0-9 --arms decide
# --budgets 1000,1400,2000,3000,5000,10000 --alone-budgets 15000,20000 --budget-arm kd-ce-frozen-s1fc-topk
# --out study_out".
STUDY_ARGS ?= --preset demo --seeds 0-9 --arms decide --budgets 1000,1500,2000,3000,6000,12000 --budget-arm kd-l2-decay-s1fc-all --out study_out
study: build
	$(VPY) tools/study.py $(STUDY_ARGS)

bench: build
	$(VPY) bench/kernels.py

# Every command of README.md as written: tests/test_readme.py, then the long blocks (make
# demo, make test) in this checkout; best run in a fresh clone.
readme-check: build
	$(VPY) tools/check_readme.py --all

# The op cases under AddressSanitizer: an instrumented CPU-only build of the extension (CPU
# and emulated CUDA back ends) in build/asan, from a copy of the sources. libstdc++ is preloaded
# with the runtime: python itself does not link it, and ASan's C++-exception interceptor must
# find it at start-up (otherwise the first exception thrown by a kernel aborts the process).
ASAN_DIR := build/asan
sanitize: setup
	mkdir -p $(ASAN_DIR)/src
	cp -rp csrc mlic prototxt_ports tests setup.py pyproject.toml $(ASAN_DIR)/src/
	rm -f $(ASAN_DIR)/src/mlic/_C*.so
	cd $(ASAN_DIR)/src && MLIC_SANITIZE=address $(abspath $(VPY)) setup.py -q build_ext --inplace \
		--build-temp $(abspath $(ASAN_DIR))/objects
	cd $(ASAN_DIR)/src && LD_PRELOAD="$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0 \
		$(abspath $(VPY)) -m pytest -q -p no:cacheprovider tests/robustness/test_ops.py \
		tests/ops/test_roi_pool_kernel.py tests/ops/test_pool_kernel.py tests/ops/test_two_stream_kernel.py \
		-k "not gradcheck" $(PYTEST_ARGS)

# On a GPU machine: the CUDA checks and benchmarks in one command (bench/gpu_check.py).
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf build mlic/_C*.so *.egg-info
