"""modulate: the norm-free per-frame modulation y = x * (1 + scale[f]) + shift[f] (Open-Sora's
``t2i_modulate`` after its own norm, diffusers' ``x * (1 + scale[:, None]) + shift[:, None]``), in the
layouts of wmpo.ops.layout. No custom kernel: the fast path is one ``torch.addcmul`` (a single
read of x and write of y, the memory traffic a fused kernel would have); autograd and
torch.compile handle it as ordinary torch ops. The reference computes in float32 and rounds once."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.ops.layout import frame_layout


def modulate_ref(x: Tensor, shift: Tensor, scale: Tensor, *, tokens_per_frame: Optional[int] = None) -> Tensor:
    """y = x * (1 + scale[f]) + shift[f] in float32 math (float64 for float64 x), rounded once to x.dtype."""
    lay = frame_layout("x", x, {"shift": shift, "scale": scale}, tokens_per_frame)
    up = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.reshape(lay.frames, lay.tokens_per_frame, lay.dim).to(up)
    y = rows * (1 + lay.per_frame(scale).to(up)).unsqueeze(1) + lay.per_frame(shift).to(up).unsqueeze(1)
    return y.to(x.dtype).view(lay.shape)


def modulate(x: Tensor, shift: Tensor, scale: Tensor, *, tokens_per_frame: Optional[int] = None,
             backend: Optional[str] = None) -> Tensor:
    """y = x * (1 + scale[f]) + shift[f]. x [R, D] with shift/scale [F, D], or x [*B, N, D] /
    [*B, F, S, D] with shift/scale [*B, F, D] or [*B, D]. Returns x's shape and dtype (the
    modulation is cast to x.dtype: it is small). backend='ref' (or reference_ops()) runs the reference."""
    lay = frame_layout("x", x, {"shift": shift, "scale": scale}, tokens_per_frame)
    if (dispatch.reference_forced() and not backend) or dispatch.requested_backend(backend) == "ref":
        return modulate_ref(x, shift, scale)
    sh = lay.per_frame(shift).to(x.dtype).unsqueeze(1)
    one_plus = (1 + lay.per_frame(scale).float()).to(x.dtype).unsqueeze(1)
    y = torch.addcmul(sh, x.reshape(lay.frames, lay.tokens_per_frame, lay.dim), one_plus)
    return y.view(lay.shape)
