"""adaln_modulate: LayerNorm + per-frame scale/shift, y = layer_norm(x) * (1 + scale[f]) + shift[f],
f = row // tokens_per_frame. x [R, D]; shift/scale [F, D]. Reference, custom op + fake, backward, API."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.checks import check_rows


def adaln_modulate_ref(x, shift, scale, *, tokens_per_frame: int, eps: float = 1e-6):
    """y = layer_norm(x) * (1 + scale[f]) + shift[f], f = row // tokens_per_frame. x [R, D]; shift/scale [F, D]."""
    n = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    sc = scale.float().repeat_interleave(tokens_per_frame, 0)
    sh = shift.float().repeat_interleave(tokens_per_frame, 0)
    return (n * (1 + sc) + sh).to(x.dtype)


def adaln_backward_ref(dy, x, scale, tpf, eps):
    """(dx, dshift, dscale) of adaln_modulate in fp32 math."""
    R, D = x.shape
    nf = R // tpf
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt(((xf - mean) ** 2).mean(-1, keepdim=True) + eps)
    xhat = (xf - mean) * rstd
    dyf = dy.float().view(nf, tpf, D)
    dshift = dyf.sum(1)
    dscale = (dyf * xhat.view(nf, tpf, D)).sum(1)
    g = (dyf * (1 + scale.float()).unsqueeze(1)).view(R, D)
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    return dx.to(x.dtype), dshift.to(scale.dtype), dscale.to(scale.dtype)


def _impl(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float, backend: str) -> Tensor:
    be = dispatch.pick(backend, x, shift, scale)
    if be == "triton":
        return dispatch.kernel("adaln_modulate").adaln_modulate(x, shift, scale, tokens_per_frame, eps)
    if be in ("cpp", "cuda"):
        return dispatch.ext().adaln_modulate(x, shift, scale, tokens_per_frame, eps)
    return adaln_modulate_ref(x, shift, scale, tokens_per_frame=tokens_per_frame, eps=eps).contiguous()


@torch.library.custom_op("wmpo::adaln_modulate", mutates_args=())
def _op(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float, backend: str) -> Tensor:
    return _impl(x, shift, scale, tokens_per_frame, eps, backend)


@_op.register_fake
def _(x, shift, scale, tokens_per_frame, eps, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("wmpo::adaln_modulate_backward", mutates_args=())
def adaln_modulate_backward_op(dy: Tensor, x: Tensor, scale: Tensor, tokens_per_frame: int, eps: float,
                               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dshift, dscale); also the LayerNorm part of gated_residual_adaln's backward."""
    be = dispatch.pick(backend, x, scale)
    if be in ("cpp", "cuda") and dy.dtype == x.dtype:
        return tuple(dispatch.ext().adaln_modulate_bwd(dy, x, scale, tokens_per_frame, eps))
    return adaln_backward_ref(dy, x, scale, tokens_per_frame, eps)


@adaln_modulate_backward_op.register_fake
def _(dy, x, scale, tokens_per_frame, eps, backend):
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


def _setup(ctx, inputs, output):
    x, shift, scale, tpf, eps, backend = inputs
    ctx.save_for_backward(x, scale)
    ctx.args = (tpf, eps, backend)
    ctx.shift_dtype = shift.dtype


def _backward(ctx, dy):
    x, scale = ctx.saved_tensors
    dx, dsh, dsc = adaln_modulate_backward_op(dy.contiguous(), x, scale, *ctx.args)
    return dx, dsh.to(ctx.shift_dtype), dsc, None, None, None


_op.register_autograd(_backward, setup_context=_setup)


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, *, tokens_per_frame: int, eps: float = 1e-6,
                   backend: Optional[str] = None) -> Tensor:
    """y = layer_norm(x) * (1 + scale[f]) + shift[f], f = row // tokens_per_frame. x [R, D]; shift/scale [F, D]."""
    check_rows(x, shift, scale, tokens_per_frame)
    if dispatch.reference_forced() and not backend:
        return adaln_modulate_ref(x, shift, scale, tokens_per_frame=tokens_per_frame, eps=eps)
    op = _impl if dispatch.eager_direct(x, shift, scale) else _op
    return op(x, shift, scale, tokens_per_frame, float(eps), backend or "")
