import os

# Tests are CPU-only in CI: Triton runs in its interpreter, MuJoCo renders through EGL (Mesa),
# and numba never JITs in a process that renders (see wmpo.sim).
# With a GPU, the Triton kernels must be compiled (not interpreted): the interpreter is switched on
# only when no CUDA device is visible (an explicit TRITON_INTERPRET in the environment wins).


def _cuda_visible() -> bool:
    """True when torch sees a CUDA device (asked before anything imports triton)."""
    import torch

    return torch.cuda.is_available()


def triton_interpret_default(cuda_available: bool) -> str | None:
    """The TRITON_INTERPRET value the test session sets when the environment gives none."""
    return None if cuda_available else "1"


_interp = triton_interpret_default(_cuda_visible())
if _interp is not None:
    os.environ.setdefault("TRITON_INTERPRET", _interp)
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WMPO_NO_PROGRESS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_report_header(config):
    return f"wmpo: CUDA available={torch.cuda.is_available()}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TRITON_INTERPRET") != "1":
        skip_interp = pytest.mark.skip(reason="runs Triton kernels on CPU tensors: needs TRITON_INTERPRET=1 "
                                              "(set by this conftest only when no GPU is visible)")
        for item in items:
            if item.get_closest_marker("interpreter") is not None:
                item.add_marker(skip_interp)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any node named "gpu"
            item.add_marker(skip)
