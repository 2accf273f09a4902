"""gated_residual: out = residual + gate[f] * y, the gated skip connection of adaLN-Zero blocks
(DiT, STDiT3, diffusers ``hidden_states + gate_msa.unsqueeze(1) * attn_output``) without the
LayerNorm that `gated_residual_adaln` fuses after it (use this one when something else, e.g. a
cross-attention, sits between the residual and the next norm). Layouts of wmpo.ops.layout. No
custom kernel: one ``torch.addcmul`` pass (rows in residual's dtype, y may be lower precision, as
under autocast); the reference computes in float32 and rounds once."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.layout import frame_layout


def gated_residual_ref(residual: Tensor, y: Tensor, gate: Tensor, *, tokens_per_frame: Optional[int] = None) -> Tensor:
    """out = residual + gate[f] * y in float32 math (float64 for float64 rows), rounded once to residual.dtype."""
    lay = frame_layout("residual", residual, {"gate": gate}, tokens_per_frame, rows={"y": y})
    up = torch.float64 if residual.dtype == torch.float64 else torch.float32
    rows = (lay.frames, lay.tokens_per_frame, lay.dim)
    out = residual.reshape(rows).to(up) + lay.per_frame(gate).to(up).unsqueeze(1) * y.reshape(rows).to(up)
    return out.to(residual.dtype).view(lay.shape)


def gated_residual(residual: Tensor, y: Tensor, gate: Tensor, *, tokens_per_frame: Optional[int] = None,
                   backend: Optional[str] = None) -> Tensor:
    """out = residual + gate[f] * y. residual/y [R, D] with gate [F, D], or [*B, N, D] / [*B, F, S, D]
    with gate [*B, F, D] or [*B, D]. Returns residual's shape and dtype (a new tensor)."""
    lay = frame_layout("residual", residual, {"gate": gate}, tokens_per_frame, rows={"y": y})
    if (dispatch.reference_forced() and not backend) or dispatch.requested_backend(backend) == "ref":
        return gated_residual_ref(residual, y, gate)
    rows = (lay.frames, lay.tokens_per_frame, lay.dim)
    g = lay.per_frame(gate).to(residual.dtype).unsqueeze(1)
    yv = y.reshape(rows)
    if yv.dtype != residual.dtype and not (residual.dtype == torch.float32 and yv.dtype in (torch.bfloat16, torch.float16)):
        yv = yv.to(residual.dtype)
    out = torch.addcmul(residual.reshape(rows), g, yv)
    return out.view(lay.shape)
