"""adaln_modulate: LayerNorm + per-frame scale/shift, y = layer_norm(x) * (1 + scale[f]) + shift[f],
f = row // tokens_per_frame. Kernel form x [R, D], shift/scale [F, D]; the public function also takes
x [*B, N, D] / [*B, F, S, D] with shift/scale [*B, F, D] / [*B, D] and LayerNorm weight/bias (see
wmpo.ops.layout). Reference, custom op + fake, backward, API."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.checks import check_eps, check_rows
from wmpo.ops.layout import fold_affine, frame_layout

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def adaln_fusable_dtypes(row_dtype: torch.dtype, mod_dtype: torch.dtype) -> bool:
    """True when the fused AdaLN kernels take rows (x / residual, and the outputs) in `row_dtype` with
    per-frame modulation (and y) in `mod_dtype`: one dtype, or fp32 rows with bf16/fp16 modulation
    (the autocast case: fp32 residual stream, bf16 linear outputs)."""
    return row_dtype == mod_dtype or (row_dtype == torch.float32 and mod_dtype in _LOW_PRECISION)


def pick_adaln(backend: str, x: Tensor, mod_dtype: torch.dtype) -> str:
    """Backend for an AdaLN call whose rows are x.dtype and whose modulation is mod_dtype."""
    be = dispatch.resolve_backend(x.device, backend or None)
    if be != "ref" and not adaln_fusable_dtypes(x.dtype, mod_dtype):
        dispatch.fallback("wmpo.ops.mixed-dtype-adaln", f"wmpo.ops: AdaLN rows in {x.dtype} with modulation in "
                          f"{mod_dtype} run the reference implementation (fused: one dtype, or fp32 rows with "
                          "bf16/fp16 modulation)", explicit=bool(backend) and backend != "auto")
        return "ref"
    return be


def as_dtype(dtype: torch.dtype, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The small per-frame tensors in the modulation dtype (a no-op when they already are)."""
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def adaln_modulate_ref(x, shift, scale, *, tokens_per_frame: Optional[int] = None, weight=None, bias=None,
                       eps: float = 1e-6):
    """y = layer_norm(x; weight, bias) * (1 + scale[f]) + shift[f] in float32 math (float64 for float64
    inputs), rounded once to x.dtype. Layouts as `adaln_modulate`."""
    lay = frame_layout("x", x, {"shift": shift, "scale": scale}, tokens_per_frame)
    up = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = None if weight is None else weight.to(up)
    b = None if bias is None else bias.to(up)
    n = F.layer_norm(lay.rows(x).to(up), (lay.dim,), w, b, eps=eps).view(lay.frames, lay.tokens_per_frame, lay.dim)
    y = n * (1 + lay.per_frame(scale).to(up)).unsqueeze(1) + lay.per_frame(shift).to(up).unsqueeze(1)
    return y.to(x.dtype).view(lay.shape)


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
    be = pick_adaln(backend, x, shift.dtype)
    if be != "ref":
        (scale,) = as_dtype(shift.dtype, scale)
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
    be = pick_adaln(backend, x, scale.dtype)
    if be in ("cpp", "cuda"):  # the kernel takes one dtype: scale is small, cast it (dy is cast inside)
        dx, dsh, dsc = dispatch.ext().adaln_modulate_bwd(dy, x, scale.to(x.dtype), tokens_per_frame, eps)
        return dx, dsh.to(scale.dtype), dsc.to(scale.dtype)
    return adaln_backward_ref(dy, x, scale, tokens_per_frame, eps)


@adaln_modulate_backward_op.register_fake
def _(dy, x, scale, tokens_per_frame, eps, backend):
    cf = torch.contiguous_format  # the kernels return contiguous tensors; the fakes must say so
    return torch.empty_like(x, memory_format=cf), torch.empty_like(scale, memory_format=cf), torch.empty_like(scale, memory_format=cf)


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


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, *, tokens_per_frame: Optional[int] = None,
                   weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-6,
                   backend: Optional[str] = None) -> Tensor:
    """y = layer_norm(x; weight, bias) * (1 + scale[f]) + shift[f] for every token of frame f.

    x [R, D] with shift/scale [F, D] (tokens_per_frame = R / F), or x [*B, N, D] / [*B, F, S, D]
    with shift/scale [*B, F, D] (one vector per frame; N must be a multiple of F) or [*B, D] (one per
    sample). tokens_per_frame is inferred; when given it must agree. weight/bias [D]: LayerNorm's
    affine (folded into the per-frame modulation, see wmpo.ops.layout.fold_affine). Returns x's shape."""
    lay = frame_layout("x", x, {"shift": shift, "scale": scale}, tokens_per_frame)
    check_eps(eps)
    if dispatch.reference_forced() and not backend:
        return adaln_modulate_ref(x, shift, scale, weight=weight, bias=bias, eps=eps)
    if weight is not None or bias is not None:
        shift, scale = fold_affine(shift, scale, weight, bias, lay.dim, x.dtype)
    x2, sh2, sc2 = lay.rows(x), lay.per_frame(shift), lay.per_frame(scale)
    check_rows(x2, sh2, sc2, lay.tokens_per_frame)
    op = _impl if dispatch.eager_direct(x2, sh2, sc2) else _op
    return lay.restore(op(x2, sh2, sc2, lay.tokens_per_frame, float(eps), backend or ""))
