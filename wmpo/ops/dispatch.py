"""The one backend dispatcher of wmpo's ops: which implementation an op call runs.

Backends: ``triton`` (kernels/), ``cuda`` and ``cpp`` (the compiled extension wmpo._C, ops under
torch.ops.wmpo_C) and ``ref`` (plain PyTorch). The choice comes from, in order: the ``backend=``
argument of a call, the `reference_ops()` context, the ``WMPO_BACKEND`` environment variable
(default ``auto``). `resolve_backend` is the only place that reads WMPO_BACKEND.

Falling back: a call that cannot run the backend it was meant to (no extension, no Triton, a dtype
mix or a strided tensor the kernels do not take) runs the reference and warns once per reason
(`fallback`). It raises instead when the backend was asked for by the call's ``backend=`` argument
or when ``WMPO_STRICT=1`` is set.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from typing import Iterator, Optional

import torch
from torch import Tensor

from wmpo.build_info import strict as _strict_env
from wmpo.build_info import torch_mismatch
from wmpo.utils.logging import warn_once


def _load_extension() -> tuple[bool, str]:
    """Import wmpo._C (it registers torch.ops.wmpo_C.*) unless it was built for another torch
    (wmpo.build_info: loading it there could crash). (loaded, why not)."""
    mismatch = torch_mismatch()
    if mismatch:
        return False, mismatch
    try:
        importlib.import_module("wmpo._C")
    except ImportError as e:  # pragma: no cover - depends on the build
        return False, str(e)
    return True, ""


HAS_EXTENSION, _EXTENSION_ERROR = _load_extension()

BACKENDS = ("auto", "triton", "cuda", "cpp", "ref")

_REFERENCE_DEPTH = 0  # > 0 inside `reference_ops()`


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Inside this context every wmpo op runs its plain-PyTorch reference (``*_ref``) directly,
    without the custom-op layer, so ``torch.compile`` sees (and may fuse) the reference math.
    The benchmarks' "eager reference" modes use it; ``WMPO_BACKEND=ref`` is the process-wide switch."""
    global _REFERENCE_DEPTH
    _REFERENCE_DEPTH += 1
    try:
        yield
    finally:
        _REFERENCE_DEPTH -= 1


def reference_forced() -> bool:
    """True inside `reference_ops()`."""
    return _REFERENCE_DEPTH > 0


def extension_has_cuda() -> bool:
    """True when wmpo._C was compiled with its CUDA kernels."""
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("wmpo_C::adaln_modulate", "CUDA")


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_usable(device_type: str) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors in the interpreter (TRITON_INTERPRET=1)."""
    if not _triton_importable():
        return False
    return device_type == "cuda" or (device_type == "cpu" and triton_interpreting())


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend asked for: `backend` if given, else 'ref' inside `reference_ops()`, else
    WMPO_BACKEND (default auto). Unknown names are an error naming where they came from."""
    if backend:
        want = backend.strip().lower()
        if want not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS} (argument or WMPO_BACKEND), got {backend!r}")
        return want
    if reference_forced():
        return "ref"
    want = (os.environ.get("WMPO_BACKEND") or "auto").strip().lower() or "auto"
    if want not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} (argument or WMPO_BACKEND), got {want!r}")
    return want


def strict() -> bool:
    """WMPO_STRICT=1: every fallback to another backend or to the reference raises."""
    return _strict_env()


class BackendUnavailableError(RuntimeError):
    """An op could not run the backend that was asked for (explicit ``backend=`` or WMPO_STRICT=1)."""


def fallback(key: str, message: str, explicit: bool = False) -> None:
    """A call falls back (to the reference, or from an unavailable backend to auto): warn once per
    `key` naming the reason, or raise BackendUnavailableError when `explicit` (the call's own
    ``backend=``) or WMPO_STRICT=1."""
    if explicit or strict():
        why = "backend= was given" if explicit else "WMPO_STRICT=1"
        raise BackendUnavailableError(f"{message} [raised instead of falling back: {why}]")
    warn_once(key, message)


def resolve_backend(device, backend: Optional[str] = None) -> str:
    """The backend an op on `device` runs with (see the module docstring).

    auto = triton (else cuda) on GPU tensors, cpp on CPU tensors, ref as the last resort. A backend
    from WMPO_BACKEND that cannot run on `device` falls back to auto with a warning; one given as the
    ``backend=`` argument (or any, under WMPO_STRICT=1) raises BackendUnavailableError instead.
    """
    want = requested_backend(backend)
    dev = torch.device(device).type if not isinstance(device, torch.device) else device.type
    explicit = bool(backend) and want not in ("auto", "ref")
    if explicit or strict():  # not cached: raises every time
        return _resolve.__wrapped__(want, dev, triton_interpreting(), explicit)
    return _resolve(want, dev, triton_interpreting(), False)


@functools.lru_cache(maxsize=None)
def _resolve(want: str, dev: str, _interp: bool, explicit: bool) -> str:
    if want == "ref":
        return "ref"
    if want == "triton":
        if triton_usable(dev):
            return "triton"
        why = "triton is not installed" if not _triton_importable() else "CPU tensors need TRITON_INTERPRET=1"
        fallback(f"wmpo.ops.no-triton.{dev}", f"wmpo.ops: backend 'triton' cannot run on {dev} tensors ({why}); "
                 "using backend 'auto' instead", explicit)
    elif want == "cuda":
        if dev == "cuda" and extension_has_cuda():
            return "cuda"
        why = ("not a CUDA tensor" if dev != "cuda" else
               f"wmpo._C did not load: {_EXTENSION_ERROR}" if not HAS_EXTENSION else "wmpo._C was built without CUDA kernels")
        fallback(f"wmpo.ops.no-cuda.{dev}", f"wmpo.ops: backend 'cuda' is not available for {dev} tensors ({why}); "
                 "using backend 'auto' instead", explicit)
    elif want == "cpp":
        if dev == "cpu" and HAS_EXTENSION:
            return "cpp"
        why = "not a CPU tensor" if dev != "cpu" else f"wmpo._C did not load: {_EXTENSION_ERROR}"
        fallback(f"wmpo.ops.no-cpp.{dev}", f"wmpo.ops: backend 'cpp' is not available for {dev} tensors ({why}); "
                 "using backend 'auto' instead", explicit)
    if dev == "cuda":
        if triton_usable("cuda"):
            return "triton"
        if extension_has_cuda():
            return "cuda"
    elif dev == "cpu" and HAS_EXTENSION:
        return "cpp"
    why = f"wmpo._C did not load: {_EXTENSION_ERROR}" if not HAS_EXTENSION else "no fused kernel for this device"
    fallback(f"wmpo.ops.ref.{dev}", f"wmpo.ops: no fused backend for {dev} tensors ({why}); falling back to the "
             "plain-PyTorch reference ops (slow). `python -m wmpo.info` shows what this install has; a wheel "
             "needs the torch it was built with, a source checkout `pip install --no-build-isolation -e .`")
    return "ref"


def pick(backend: str, *tensors: Tensor) -> str:
    """Backend for one call; mixed floating dtypes run the reference (the AdaLN ops use their own pick)."""
    be = resolve_backend(tensors[0].device, backend or None)
    if be != "ref":
        dts = {t.dtype for t in tensors if t is not None and t.is_floating_point()}
        if len(dts) > 1:
            fallback("wmpo.ops.mixed-dtype", f"wmpo.ops: inputs with mixed dtypes {sorted(map(str, dts))} "
                     "run the reference implementation; pass one dtype to use the fused kernels",
                     explicit=bool(backend) and backend != "auto")
            return "ref"
    return be


def eager_direct(*tensors: Tensor) -> bool:
    """Skip the custom-op layer (its dispatch overhead) when neither torch.compile nor autograd needs it."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def kernel(name: str):
    """The Triton launcher module of op `name` (wmpo.kernels.<name>)."""
    return importlib.import_module(f"wmpo.kernels.{name}")


def ext():
    """The compiled extension's ops (torch.ops.wmpo_C)."""
    return torch.ops.wmpo_C
