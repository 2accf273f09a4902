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

# robomimic's own loaders for tests/test_store_robomimic.py (optional; --no-deps: see docs/data.md)
robomimic: setup
	$(VPY) -m pip install -q --no-deps robomimic==0.3.0

wheel: setup
	$(VPY) -m pip wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist $(VENV)
