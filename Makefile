# The two commands of the README:
#   make tiny   set up .venv and run the whole WMPO pipeline on the tiny preset (CPU, minutes)
#   make test   set up .venv and run the test suite (what .ci/run calls)
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
TASK      ?= square
OUT       ?= runs/tiny-$(TASK)
export MUJOCO_GL ?= egl

.PHONY: setup tiny test test-slow robomimic build wheel wheel-cuda clean

$(VENV)/.installed: requirements.txt requirements-build.txt pyproject.toml CMakeLists.txt $(wildcard csrc/* csrc/cpu/* csrc/cuda/*)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

tiny: setup
	$(VENV)/bin/wmpo run --task $(TASK) --preset tiny --out $(OUT)

test: setup
	$(VPY) -m pytest -q

test-slow: setup
	$(VPY) -m pytest -q -m slow

# make wheel: build outside the source tree (WHEEL_BUILD), against the installed torch, then
# `auditwheel repair` to a manylinux tag, leaving torch's own libraries (libtorch*, libc10*) out of
# the wheel (they come from the torch requirement). Result in dist/. See docs/install.md.
WHEEL_BUILD ?= $(or $(TMPDIR),/tmp)/wmpo-wheel-build
TORCH_LIBS  := --exclude 'libtorch*.so*' --exclude 'libc10*.so*'
# robomimic's own loaders for tests/test_store_robomimic.py (optional; --no-deps: see docs/data.md)
robomimic: setup
	$(VPY) -m pip install -q --no-deps robomimic==0.3.0

# $(call build_wheel,<venv>,<build dir>,<extra pip wheel options>,<environment for the build>)
define build_wheel
	rm -rf $(2) && mkdir -p dist
	$(4) $(1)/bin/python -m pip wheel -q --no-build-isolation --no-deps -C build-dir=$(2)/build $(3) -w $(2)/raw .
	PATH="$(abspath $(1))/bin:$$PATH" $(1)/bin/auditwheel repair $(TORCH_LIBS) -w $(2)/repaired $(2)/raw/wmpo-*.whl
	$(1)/bin/auditwheel show $(2)/repaired/wmpo-*.whl
	cp $(2)/repaired/wmpo-*.whl dist/ && ls dist/
endef

wheel: setup
	$(call build_wheel,$(VENV),$(WHEEL_BUILD),)

# make wheel-cuda: the CUDA wheel (0.1.0+pt213cu130), compile only: any Linux x86-64 machine with an
# nvcc of torch's CUDA major version (CUDA_NVCC), GPU or not. It has its own venv (CU_VENV) with
# PyPI's CUDA build of torch (CU_TORCH from CU_INDEX; --isolated and no PIP_FIND_LINKS, so that this
# machine's pip configuration, whose find-links offer the +cpu build, is bypassed), with torch's
# nvidia-* packages (~4.7 GB in all): `import torch` needs them (libtorch_cuda.so links cublas, cudnn,
# nccl, ...), and the build imports torch. WMPO_CUDA=ON: no silent CPU-only fallback. cudart is
# linked statically; libtorch_cuda / libc10_cuda are excluded like the other torch libraries.
CU_VENV   ?= .venv-cu
CU_TORCH  ?= torch==2.13.0
CU_INDEX  ?= https://pypi.org/simple
CU_ARCHS  ?= 8.0;9.0
CUDA_NVCC ?= /usr/local/cuda/bin/nvcc
CU_BUILD  ?= $(or $(TMPDIR),/tmp)/wmpo-wheel-cuda-build
CU_JOBS   ?= 2

$(CU_VENV)/.installed: requirements-build.txt
	test -x $(CU_VENV)/bin/python || $(PY) -m venv $(CU_VENV)
	env -u PIP_FIND_LINKS $(CU_VENV)/bin/python -m pip install -q --isolated --disable-pip-version-check --index-url $(CU_INDEX) "$(CU_TORCH)"
	$(CU_VENV)/bin/python -m pip install -q -r requirements-build.txt
	$(CU_VENV)/bin/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'wmpo: $(CU_TORCH) from $(CU_INDEX) is not a CUDA build of torch')"
	touch $@

wheel-cuda: $(CU_VENV)/.installed
	$(call build_wheel,$(CU_VENV),$(CU_BUILD),-C cmake.define.WMPO_CUDA=ON -C cmake.define.WMPO_NVCC=$(CUDA_NVCC),\
	  TORCH_CUDA_ARCH_LIST="$(CU_ARCHS)" CMAKE_BUILD_PARALLEL_LEVEL=$(CU_JOBS))

clean:
	rm -rf build dist $(VENV) $(CU_VENV)
