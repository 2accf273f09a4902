import os

# Tests are CPU-only in CI: Triton runs in its interpreter, MuJoCo renders through EGL (Mesa),
# and numba never JITs in a process that renders (see wmpo.sim).
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WMPO_NO_PROGRESS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
