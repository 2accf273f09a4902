"""gated_residual_adaln: residual + gate[f] * y, then LayerNorm + per-frame modulate; two outputs
(out, h). Kernel form rows [R, D], per-frame [F, D]; the public function takes the layouts of
wmpo.ops.layout and LayerNorm weight/bias. Reference, custom op + fake, backward (through
adaln_modulate's), API."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.adaln_modulate import adaln_modulate_backward_op, adaln_modulate_ref, as_dtype, pick_adaln
from wmpo.ops.checks import check_eps, check_rows
from wmpo.ops.layout import fold_affine, frame_layout


def gated_residual_adaln_ref(residual, y, gate, shift, scale, *, tokens_per_frame: Optional[int] = None,
                             weight=None, bias=None, eps: float = 1e-6):
    """out = residual + gate[f] * y; h = layer_norm(out; weight, bias) * (1 + scale[f]) + shift[f].
    Returns (out, h). Layouts as `gated_residual_adaln`."""
    lay = frame_layout("residual", residual, {"shift": shift, "scale": scale, "gate": gate}, tokens_per_frame,
                       rows={"y": y})
    up = torch.float64 if residual.dtype == torch.float64 else torch.float32
    g = lay.per_frame(gate).to(up).unsqueeze(1)
    rows = (lay.frames, lay.tokens_per_frame, lay.dim)
    out = (residual.reshape(rows).to(up) + g * y.reshape(rows).to(up)).to(residual.dtype).view(lay.shape)
    h = adaln_modulate_ref(out, shift, scale, weight=weight, bias=bias, eps=eps)
    return out, h


def _impl(residual: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor,
          tokens_per_frame: int, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    be = pick_adaln(backend, residual, y.dtype)
    if be != "ref":
        gate, shift, scale = as_dtype(y.dtype, gate, shift, scale)
    if be == "triton":
        return dispatch.kernel("gated_residual_adaln").gated_residual_adaln(residual, y, gate, shift, scale, tokens_per_frame, eps)
    if be in ("cpp", "cuda"):
        return tuple(dispatch.ext().gated_residual_adaln(residual, y, gate, shift, scale, tokens_per_frame, eps))
    out, h = gated_residual_adaln_ref(residual, y, gate, shift, scale, tokens_per_frame=tokens_per_frame, eps=eps)
    return out.contiguous().clone() if out.data_ptr() == residual.data_ptr() else out.contiguous(), h.contiguous()


@torch.library.custom_op("wmpo::gated_residual_adaln", mutates_args=())
def _op(residual: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float,
        backend: str) -> tuple[Tensor, Tensor]:
    return _impl(residual, y, gate, shift, scale, tokens_per_frame, eps, backend)


@_op.register_fake
def _(residual, y, gate, shift, scale, tokens_per_frame, eps, backend):
    cf = torch.contiguous_format
    return torch.empty_like(residual, memory_format=cf), torch.empty_like(residual, memory_format=cf)


def _setup(ctx, inputs, output):
    residual, y, gate, shift, scale, tpf, eps, backend = inputs
    ctx.save_for_backward(output[0], y, gate, scale)
    ctx.args = (tpf, eps, backend)
    ctx.dtypes = (residual.dtype, shift.dtype)


def _backward(ctx, dout, dh):
    out, y, gate, scale = ctx.saved_tensors
    tpf, eps, backend = ctx.args
    R, D = out.shape
    nf = R // tpf
    if dh is None:
        dh = torch.zeros_like(out)
    dx, dsh, dsc = adaln_modulate_backward_op(dh.contiguous(), out, scale, tpf, eps, backend)
    dtot = dx.float() if dout is None else dx.float() + dout.float()
    dtv = dtot.view(nf, tpf, D)
    dy = (dtv * gate.float().unsqueeze(1)).view(R, D).to(y.dtype)
    dgate = (dtv * y.float().view(nf, tpf, D)).sum(1).to(gate.dtype)
    return dtot.to(ctx.dtypes[0]), dy, dgate, dsh.to(ctx.dtypes[1]), dsc, None, None, None


_op.register_autograd(_backward, setup_context=_setup)


def gated_residual_adaln(residual: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, *,
                         tokens_per_frame: Optional[int] = None, weight: Optional[Tensor] = None,
                         bias: Optional[Tensor] = None, eps: float = 1e-6,
                         backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(out, h): out = residual + gate[f] * y; h = layer_norm(out; weight, bias) * (1 + scale[f]) + shift[f].

    residual/y [R, D] with gate/shift/scale [F, D], or residual/y [*B, N, D] / [*B, F, S, D] with
    gate/shift/scale [*B, F, D] or [*B, D] (see `adaln_modulate`). Both outputs have residual's shape."""
    lay = frame_layout("residual", residual, {"shift": shift, "scale": scale, "gate": gate}, tokens_per_frame,
                       rows={"y": y})
    check_eps(eps)
    if dispatch.reference_forced() and not backend:
        return gated_residual_adaln_ref(residual, y, gate, shift, scale, weight=weight, bias=bias, eps=eps)
    if weight is not None or bias is not None:
        shift, scale = fold_affine(shift, scale, weight, bias, lay.dim, residual.dtype)
    r2, y2 = lay.rows(residual), lay.rows(y)
    g2, sh2, sc2 = lay.per_frame(gate), lay.per_frame(shift), lay.per_frame(scale)
    check_rows(r2, sh2, sc2, lay.tokens_per_frame, xname="residual", extra_rows=(("y", y2),),
               extra_frames=(("gate", g2),))
    op = _impl if dispatch.eager_direct(r2, y2, g2, sh2, sc2) else _op
    out, h = op(r2, y2, g2, sh2, sc2, lay.tokens_per_frame, float(eps), backend or "")
    return lay.restore(out), lay.restore(h)
