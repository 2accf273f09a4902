"""The ecosystem layouts of the per-frame ops, mapped onto their 2-D kernel form by reshaping only.

Open-Sora/STDiT3 and diffusers hold tokens as x ``[*B, N, D]`` (N = frames x tokens per frame) or
``[*B, F, S, D]`` and modulation as ``[*B, F, D]`` (one vector per frame) or ``[*B, D]`` (one per
sample). The kernels take rows ``[R, D]`` with modulation ``[R / tokens_per_frame, D]``; both
ecosystem forms are that, after flattening, because frame f of sample b owns a contiguous run of
rows. The rule (`frame_layout`): with x leading dims L and modulation leading dims M,

- len(M) == len(L): M[:-1] == L[:-1] and tokens_per_frame = L[-1] / M[-1] (error unless a whole number);
- len(M) <  len(L): M == L[:len(M)] and tokens_per_frame = prod(L[len(M):]).

The 2-D form (x ``[R, D]``, modulation ``[F, D]``) is the first case with no batch dims.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from wmpo.utils.checks import check_same_device, check_tensor


@dataclass(frozen=True)
class FrameLayout:
    """How x and its per-frame tensors flatten: rows [R, D], frames [R / tokens_per_frame, D]."""

    shape: tuple[int, ...]  # x's shape, restored on the outputs
    tokens_per_frame: int
    frames: int
    dim: int

    def rows(self, t: Tensor) -> Tensor:
        """A row tensor (x's shape) as [R, D] (a view when it can be)."""
        return t.reshape(-1, self.dim)

    def per_frame(self, t: Tensor) -> Tensor:
        """A modulation tensor as [frames, D]."""
        return t.reshape(self.frames, self.dim)

    def restore(self, t: Tensor) -> Tensor:
        """A kernel output [R, D] back in x's shape."""
        return t.view(self.shape) if t.is_contiguous() else t.reshape(self.shape)


def frame_layout(xname: str, x: Tensor, mods: dict[str, Tensor], tokens_per_frame: Optional[int] = None,
                 rows: dict[str, Tensor] | None = None) -> FrameLayout:
    """Check x (and the extra row tensors `rows`, same shape) against its per-frame tensors `mods`
    (all one shape) and return the layout; every error starts with the argument's name."""
    check_tensor(xname, x, floating=True)
    if x.dim() < 2:
        raise ValueError(f"{xname}: expected [*B, N, D], [*B, F, S, D] or [R, D] (at least 2 dims), got shape {tuple(x.shape)}")
    D = x.shape[-1]
    for name, t in (rows or {}).items():
        check_tensor(name, t, floating=True)
        if tuple(t.shape) != tuple(x.shape):
            raise ValueError(f"{name}: expected shape {tuple(x.shape)} (same as {xname}), got {tuple(t.shape)}")
    first_name, first = next(iter(mods.items()))
    for name, t in mods.items():
        check_tensor(name, t, floating=True)
        if t.dim() < 1 or t.shape[-1] != D:
            raise ValueError(f"{name}: expected last dim {D} (same as {xname}), got shape {tuple(t.shape)}")
        if tuple(t.shape) != tuple(first.shape):
            raise ValueError(f"{name}: expected shape {tuple(first.shape)} (same as {first_name}), got {tuple(t.shape)}")
    check_same_device(**{xname: x}, **(rows or {}), **mods)
    L, M = tuple(x.shape[:-1]), tuple(first.shape[:-1])
    if len(M) == len(L) and M[:-1] == L[:-1]:
        frames_here = M[-1]
        if frames_here <= 0 or L[-1] % frames_here != 0:
            if tokens_per_frame is not None:
                raise ValueError(f"tokens_per_frame: {xname} has {L[-1]} rows per sample, not {frames_here} frames "
                                 f"of tokens_per_frame={tokens_per_frame}")
            raise ValueError(f"{xname}: {L[-1]} tokens (dim {x.dim() - 2}) is not a multiple of the {frames_here} "
                             f"frames of {first_name} {tuple(first.shape)}")
        tpf = L[-1] // frames_here
    elif len(M) < len(L) and M == L[: len(M)]:
        tpf = math.prod(L[len(M):])
    else:
        raise ValueError(f"{first_name}: expected [*B, F, D] or [*B, D] matching {xname} {tuple(x.shape)} "
                         f"(x [*B, N, D] or [*B, F, S, D]), got {tuple(first.shape)}")
    if tokens_per_frame is not None:
        if isinstance(tokens_per_frame, bool) or not isinstance(tokens_per_frame, int) or tokens_per_frame <= 0:
            raise ValueError(f"tokens_per_frame: expected a positive int or None, got {tokens_per_frame!r}")
        if tokens_per_frame != tpf:
            raise ValueError(f"tokens_per_frame: {xname} {tuple(x.shape)} with {first_name} {tuple(first.shape)} has "
                             f"{tpf} tokens per frame, got tokens_per_frame={tokens_per_frame}")
    return FrameLayout(tuple(x.shape), tpf, math.prod(M) if M else 1, D)


def fold_affine(shift: Tensor, scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], D: int,
                row_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """LayerNorm's own weight w and bias b folded into the per-frame modulation (exact algebra):
    (n * w + b) * (1 + scale) + shift = n * (1 + scale') + shift' with
    scale' = w * (1 + scale) - 1 and shift' = b * (1 + scale) + shift, computed in float32 on the
    small per-frame tensors. The result stays float32 for float32 rows and takes the modulation's
    dtype otherwise (the fused kernels' dtype rule); autograd reaches w, b, shift and scale through it."""
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t, floating=True, shape=(D,))
            check_same_device(shift=shift, **{name: t})
    math_dtype = torch.float64 if torch.float64 in (row_dtype, shift.dtype, scale.dtype) else torch.float32
    one_plus = 1 + scale.to(math_dtype)
    new_scale = scale.to(math_dtype) if weight is None else weight.to(math_dtype) * one_plus - 1
    new_shift = shift.to(math_dtype) if bias is None else bias.to(math_dtype) * one_plus + shift.to(math_dtype)
    out_dtype = row_dtype if row_dtype in (torch.float32, torch.float64) else shift.dtype
    return new_shift.to(out_dtype), new_scale.to(out_dtype)
