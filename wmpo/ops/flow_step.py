"""flow_step: the Euler update of rectified flow for all trajectories at once, in place,
x[:, c:] += (t_next - t_now) * v[:, c:], frames on dim 1 or on `frame_dim` (Open-Sora's [B, C, T, H, W]:
frame_dim=2; a contiguous x is viewed as [B * C, T, H * W], no copy). Reference, custom op + fake,
API (no backward: sampling only)."""
from __future__ import annotations

from typing import Optional

import math

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.checks import check_frames, check_num_context, split_time
from wmpo.utils.checks import check_same_device, check_tensor

STRIDED = ("wmpo.ops.flow_step: a non-contiguous x or v (e.g. a transposed view) runs the reference "
           "implementation; pass contiguous tensors (and frame_dim= for frames off dim 1) to use the fused kernels")


def flow_step_ref(x, v, t_now, t_next, *, num_context: int, frame_dim: int = 1):
    """In place: x[:, c:] += (t_next - t_now) * v[:, c:] with frames on `frame_dim` (default 1).
    t_now/t_next: [B] tensors or floats. Returns x."""
    if frame_dim % x.dim() != 1:
        flow_step_ref(x.movedim(frame_dim, 1), v.movedim(frame_dim, 1), t_now, t_next, num_context=num_context)
        return x
    B = x.shape[0]
    dt = torch.as_tensor(t_next, dtype=torch.float32, device=x.device) - torch.as_tensor(t_now, dtype=torch.float32, device=x.device)
    dt = dt.expand(B) if dt.dim() == 0 else dt
    dt = dt.view(B, *([1] * (x.dim() - 1)))
    x[:, num_context:] = (x[:, num_context:].float() + dt * v[:, num_context:].float()).to(x.dtype)
    return x


def _impl(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
          t_next_value: float, num_context: int, backend: str) -> None:
    be = dispatch.pick(backend, x, v)
    if be != "ref" and not (x.is_contiguous() and v.is_contiguous()):
        dispatch.fallback("wmpo.ops.flow_step.strided", STRIDED, explicit=bool(backend) and backend != "auto")
        be = "ref"
    if be == "triton":
        dispatch.kernel("flow_step").flow_step_(x, v, t_now, t_next, t_now_value, t_next_value, num_context)
    elif be in ("cpp", "cuda"):
        dispatch.ext().flow_step_(x, v, t_now, t_next, t_now_value, t_next_value, num_context)
    else:
        flow_step_ref(x, v, t_now_value if t_now is None else t_now, t_next_value if t_next is None else t_next,
                      num_context=num_context)


@torch.library.custom_op("wmpo::flow_step_", mutates_args=("x",))
def _op(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
        t_next_value: float, num_context: int, backend: str) -> None:
    _impl(x, v, t_now, t_next, t_now_value, t_next_value, num_context, backend)


@_op.register_fake
def _(x, v, t_now, t_next, t_now_value, t_next_value, num_context, backend):
    return None


def _frame_dim(frame_dim, ndim: int) -> int:
    if isinstance(frame_dim, bool) or not isinstance(frame_dim, int) or not -ndim < frame_dim < ndim or frame_dim % ndim == 0:
        raise ValueError(f"frame_dim: expected an int naming a dim of x other than the batch dim 0 "
                         f"(1..{ndim - 1} or negative), got {frame_dim!r}")
    return frame_dim % ndim


def flow_step(x: Tensor, v: Tensor, t_now, t_next, *, num_context: int, frame_dim: int = 1,
              backend: Optional[str] = None) -> Tensor:
    """In place: x[:, c:] += (t_next - t_now) * v[:, c:] (t_now/t_next: floats or [B] tensors), the
    first num_context frames (context) untouched. Frames are dim `frame_dim` of x [B, ...] (default
    1, [B, T, ...]; Open-Sora's latents [B, C, T, H, W]: frame_dim=2). Returns x."""
    check_frames("x", x)
    check_tensor("v", v, floating=True, shape=tuple(x.shape))
    check_same_device(x=x, v=v)
    k = _frame_dim(frame_dim, x.dim())
    check_num_context(num_context, x.shape[k])
    if torch.is_grad_enabled() and x.requires_grad:
        what = "a leaf Variable that requires grad" if x.is_leaf else "a tensor that requires grad"
        raise RuntimeError(f"flow_step: x is {what} and flow_step updates it in place without a backward "
                           "(a sampler step); call it under torch.no_grad() or on x.detach()")
    tn, tnv = split_time("t_now", t_now, x.shape[0], x)
    tx, txv = split_time("t_next", t_next, x.shape[0], x)
    if dispatch.reference_forced() and not backend:
        return flow_step_ref(x, v, tnv if tn is None else tn, txv if tx is None else tx, num_context=num_context,
                             frame_dim=k)
    if v.dtype != x.dtype and dispatch.requested_backend(backend) != "ref":
        v = v.to(x.dtype)  # mixed dtypes (fp32 latents, bf16 model output): one cast of v, then the kernel
    xs, vs = x, v
    if k != 1:
        if not (x.is_contiguous() and v.is_contiguous()):
            if dispatch.requested_backend(backend) != "ref":
                dispatch.fallback("wmpo.ops.flow_step.strided", STRIDED, explicit=bool(backend) and backend != "auto")
            return flow_step_ref(x, v, tnv if tn is None else tn, txv if tx is None else tx,
                                 num_context=num_context, frame_dim=k)
        inner = math.prod(x.shape[1:k])  # [B, C.., T, rest..] -> [B * C.., T, rest] (a view: in place reaches x)
        view = (x.shape[0] * inner, x.shape[k], math.prod(x.shape[k + 1:]))
        xs, vs = x.view(view), v.view(view)
        tn = tn.repeat_interleave(inner) if tn is not None and tn.dim() == 1 else tn
        tx = tx.repeat_interleave(inner) if tx is not None and tx.dim() == 1 else tx
    op = _impl if dispatch.eager_direct(xs, vs) else _op
    op(xs, vs, tn, tx, tnv, txv, num_context, backend or "")
    return x
