# The two commands of the README:
#   make tiny   set up .venv and run the whole WMPO pipeline on the tiny preset (CPU, minutes)
#   make test   set up .venv and run the test suite (what .ci/run calls)
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
TASK      ?= square
OUT       ?= runs/tiny-$(TASK)
export MUJOCO_GL ?= egl

.PHONY: setup tiny test test-slow robomimic build wheel clean

$(VENV)/.installed: requirements.txt pyproject.toml CMakeLists.txt $(wildcard csrc/* csrc/cpu/* csrc/cuda/*)
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

wheel: setup
	rm -rf $(WHEEL_BUILD) && mkdir -p dist
	$(VPY) -m pip wheel -q --no-build-isolation --no-deps -C build-dir=$(WHEEL_BUILD)/build -w $(WHEEL_BUILD)/raw .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair $(TORCH_LIBS) -w $(WHEEL_BUILD)/repaired $(WHEEL_BUILD)/raw/wmpo-*.whl
	$(VENV)/bin/auditwheel show $(WHEEL_BUILD)/repaired/wmpo-*.whl
	cp $(WHEEL_BUILD)/repaired/wmpo-*.whl dist/ && ls dist/

clean:
	rm -rf build dist $(VENV)
