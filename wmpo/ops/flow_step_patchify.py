"""flow_step_patchify: the few-step sampler's Euler update fused with the next step's input.

x [B, T, C, H, W] (the sampler state, image layout) is updated in place with the velocity as the world
model's final layer writes it, in patches (v [B*T*N, C*p*p], frame-major, N = (H/p)(W/p) patches per
frame, features ordered (c, row in patch, column in patch)):
    x += (t_next - t_now) * unpatchify(v)
and the updated state is returned in patches, the layout the next step's patch embedding reads:
    return patchify(x)  [B*T*N, C*p*p]
One pass instead of three (unpatchify the output, the Euler update, patchify the next input).
Reference, custom op + fake, API (no backward: sampling only)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.checks import split_time
from wmpo.utils.checks import check_same_device, check_tensor


def patchify_ref(x: Tensor, patch: int) -> Tensor:
    """[B, T, C, H, W] -> [B*T*(H/p)*(W/p), C*p*p] (frame-major patches; features (c, pi, pj))."""
    B, T, C, H, W = x.shape
    p = patch
    return x.reshape(B, T, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, C * p * p)


def unpatchify_ref(v: Tensor, shape, patch: int) -> Tensor:
    """[B*T*N, C*p*p] -> [B, T, C, H, W] (the inverse of `patchify_ref`)."""
    B, T, C, H, W = shape
    p = patch
    return v.reshape(B, T, H // p, W // p, C, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, T, C, H, W)


def flow_step_patchify_ref(x, v, t_now, t_next, *, patch: int):
    """In place x += (t_next - t_now) * unpatchify(v); returns patchify(x) (a new contiguous tensor).
    t_now/t_next: floats, 0-d or [B] tensors."""
    B = x.shape[0]
    dt = torch.as_tensor(t_next, dtype=torch.float32, device=x.device) - torch.as_tensor(t_now, dtype=torch.float32, device=x.device)
    dt = (dt.expand(B) if dt.dim() == 0 else dt).view(B, 1, 1, 1, 1)
    x.copy_((x.float() + dt * unpatchify_ref(v.float(), x.shape, patch)).to(x.dtype))
    return patchify_ref(x, patch).contiguous()


def _impl(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
          t_next_value: float, patch: int, backend: str) -> Tensor:
    be = dispatch.pick(backend, x, v)
    if be != "ref" and not x.is_contiguous():
        be = "ref"
    if be == "triton":
        return dispatch.kernel("flow_step_patchify").flow_step_patchify_(x, v, t_now, t_next, t_now_value, t_next_value, patch)
    if be in ("cpp", "cuda"):
        return dispatch.ext().flow_step_patchify_(x, v, t_now, t_next, t_now_value, t_next_value, patch)
    return flow_step_patchify_ref(x, v, t_now_value if t_now is None else t_now, t_next_value if t_next is None else t_next,
                                  patch=patch)


@torch.library.custom_op("wmpo::flow_step_patchify_", mutates_args=("x",))
def _op(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
        t_next_value: float, patch: int, backend: str) -> Tensor:
    return _impl(x, v, t_now, t_next, t_now_value, t_next_value, patch, backend)


@_op.register_fake
def _(x, v, t_now, t_next, t_now_value, t_next_value, patch, backend):
    return v.new_empty(v.shape, dtype=x.dtype)


def flow_step_patchify(x: Tensor, v: Tensor, t_now, t_next, *, patch: int, backend: Optional[str] = None) -> Tensor:
    """In place x [B, T, C, H, W] += (t_next - t_now) * unpatchify(v [B*T*N, C*p*p]); returns patchify(x)
    [B*T*N, C*p*p] in x's dtype (t_now/t_next: floats, 0-d or [B] tensors). See the module docstring."""
    check_tensor("x", x, ndim=5, floating=True)
    B, T, C, H, W = x.shape
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or H % patch or W % patch:
        raise ValueError(f"patch: expected a positive int dividing the frame size {H}x{W}, got {patch!r}")
    check_tensor("v", v, ndim=2, floating=True, shape=(B * T * (H // patch) * (W // patch), C * patch * patch))
    check_same_device(x=x, v=v)
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("flow_step_patchify: x requires grad and is updated in place without a backward "
                           "(a sampler step); call it under torch.no_grad() or on x.detach()")
    tn, tnv = split_time("t_now", t_now, B, x)
    tx, txv = split_time("t_next", t_next, B, x)
    if dispatch.reference_forced() and not backend:
        return flow_step_patchify_ref(x, v, tnv if tn is None else tn, txv if tx is None else tx, patch=patch)
    op = _impl if dispatch.eager_direct(x, v) else _op
    return op(x, v, tn, tx, tnv, txv, patch, backend or "")
