"""What this wmpo was built with (``wmpo._build_info``, written by the build) against what it runs
with, and the import-time torch check.

The compiled extension ``wmpo._C`` uses torch's C++ API, which changes between torch minor
versions: an extension built against torch 2.13 is not loaded under torch 2.14 (it could fail to
load or misbehave). On such a mismatch ``import wmpo`` warns once, naming both versions and the
fix, and the ops run without ``wmpo._C`` (Triton on GPU, the reference on CPU); with
``WMPO_STRICT=1`` the import raises instead. A source checkout that was never built has no
``_build_info``: nothing to compare, no warning here (the ops warn when ``_C`` is missing).
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional


def built_with() -> Optional[dict]:
    """The build's record (torch version, torch CUDA, CUDA kernels, ...) or None when not built."""
    try:
        mod = importlib.import_module("wmpo._build_info")
    except ImportError:
        return None
    return {k: getattr(mod, k) for k in dir(mod) if k.isupper()}


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def strict() -> bool:
    """WMPO_STRICT=1: mismatches and fallbacks raise instead of warning."""
    return os.environ.get("WMPO_STRICT", "").strip().lower() in ("1", "true", "yes")


def torch_mismatch() -> str:
    """'' when the running torch matches the one wmpo._C was built against (same major.minor, and
    CUDA-ness when the extension has CUDA kernels), else one sentence saying what differs and what to do."""
    info = built_with()
    if not info or not info.get("TORCH_VERSION"):
        return ""
    import torch

    built, running = info["TORCH_VERSION"], torch.__version__
    fix = (f"install the torch it was built for (pip install 'torch=={_minor(built)}.*'), a wmpo wheel built for "
           f"torch {_minor(running)}, or build wmpo from source against this torch "
           "(pip install --no-build-isolation .)")
    if _minor(built) != _minor(running):
        return (f"wmpo {info.get('WMPO_VERSION', '')} was built against torch {built} but torch {running} is "
                f"installed; its compiled ops (wmpo._C) are not loaded; {fix}")
    if info.get("WITH_CUDA") and not torch.version.cuda:
        return (f"wmpo {info.get('WMPO_VERSION', '')} was built with CUDA kernels for a CUDA torch "
                f"({info.get('TORCH_CUDA_VERSION')}) but torch {running} has no CUDA; its compiled ops "
                f"(wmpo._C) are not loaded; {fix}")
    return ""


def check_torch() -> None:
    """Warn once (RuntimeWarning) on a torch mismatch, or raise ImportError under WMPO_STRICT=1."""
    why = torch_mismatch()
    if not why:
        return
    if strict():
        raise ImportError(f"{why} [WMPO_STRICT=1]")
    warnings.warn(why, RuntimeWarning, stacklevel=3)
