"""noisy_context: rectified-flow noising with context frames at t_context and the per-frame timestep
vector, one pass. x0/noise [B, T, ...], t [B] -> (x_t, t_frames [B, T] fp32). Reference, custom op + fake, API."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.checks import check_frames, check_num_context
from wmpo.utils.checks import check_same_device, check_tensor


def noisy_context_ref(x0, noise, t, *, num_context: int, t_context: float):
    """Rectified-flow noising with context frames at t_context. x0/noise [B, T, ...], t [B]. Returns (x_t, t_frames [B, T])."""
    B, T = x0.shape[:2]
    tf = t.float().view(B, 1).expand(B, T).clone()
    tf[:, :num_context] = t_context
    w = tf.view(B, T, *([1] * (x0.dim() - 2)))
    xt = ((1 - w) * x0.float() + w * noise.float()).to(x0.dtype)
    return xt, tf


_MIXABLE = (torch.float32, torch.bfloat16, torch.float16)


def _pick(backend: str, x0: Tensor, noise: Tensor) -> str:
    """One dtype, or x0 and noise both among fp32 / bf16 / fp16 (autocast), run fused: the kernels read each
    input in its own dtype and compute in fp32, as the reference does. Other pairs run the reference."""
    if x0.dtype != noise.dtype and x0.dtype in _MIXABLE and noise.dtype in _MIXABLE:
        return dispatch.resolve_backend(x0.device, backend or None)
    return dispatch.pick(backend, x0, noise)


def _impl(x0: Tensor, noise: Tensor, t: Tensor, num_context: int, t_context: float, backend: str) -> tuple[Tensor, Tensor]:
    be = _pick(backend, x0, noise)
    if be == "triton":
        return dispatch.kernel("noisy_context").noisy_context(x0, noise, t, num_context, t_context)
    if be in ("cpp", "cuda"):
        return tuple(dispatch.ext().noisy_context(x0, noise, t, num_context, t_context))
    xt, tf = noisy_context_ref(x0, noise, t, num_context=num_context, t_context=t_context)
    return xt.contiguous().clone() if xt.data_ptr() == x0.data_ptr() else xt.contiguous(), tf


@torch.library.custom_op("wmpo::noisy_context", mutates_args=())
def _op(x0: Tensor, noise: Tensor, t: Tensor, num_context: int, t_context: float, backend: str) -> tuple[Tensor, Tensor]:
    return _impl(x0, noise, t, num_context, t_context, backend)


@_op.register_fake
def _(x0, noise, t, num_context, t_context, backend):
    return torch.empty_like(x0, memory_format=torch.contiguous_format), x0.new_empty(x0.shape[:2], dtype=torch.float32)


def noisy_context(x0: Tensor, noise: Tensor, t: Tensor, *, num_context: int, t_context: float,
                  backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(x_t, t_frames [B, T] fp32): frames < num_context at t_context, the rest at t[b]; x_t = (1-tf) x0 + tf noise."""
    check_frames("x0", x0)
    check_tensor("noise", noise, floating=True, shape=tuple(x0.shape))
    check_tensor("t", t, floating=True, shape=(x0.shape[0],))
    check_same_device(x0=x0, noise=noise, t=t)
    check_num_context(num_context, x0.shape[1])
    if isinstance(t_context, bool) or not isinstance(t_context, (int, float)) or not 0.0 <= t_context <= 1.0:
        raise ValueError(f"t_context: expected a float in [0, 1] (flow time of the context frames), got {t_context!r}")
    if dispatch.reference_forced() and not backend:
        return noisy_context_ref(x0, noise, t, num_context=num_context, t_context=float(t_context))
    op = _impl if dispatch.eager_direct(x0, noise, t) else _op
    return op(x0, noise, t, num_context, float(t_context), backend or "")
