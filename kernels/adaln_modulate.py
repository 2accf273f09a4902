"""Triton kernel: y = layer_norm(x) * (1 + scale[f]) + shift[f], f = row // tokens_per_frame.

A program normalizes BLOCK_R whole rows (D fits in one BLOCK_D tile) in fp32; every load is upcast
to fp32 right away (the interpreter computes bf16 arithmetic wrongly).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import rows_per_program, on_device


@triton.jit
def _adaln_modulate_kernel(x_ptr, shift_ptr, scale_ptr, y_ptr, R, D, tpf, eps,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    poffs = (rows // tpf).to(tl.int64)[:, None] * D + cols[None, :]
    sh = tl.load(shift_ptr + poffs, mask=mask, other=0.0).to(tl.float32)
    sc = tl.load(scale_ptr + poffs, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * (1.0 + sc) + sh
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, tokens_per_frame: int,
                   eps: float) -> torch.Tensor:
    x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
    R, D = x.shape
    y = torch.empty_like(x)
    if R == 0:
        return y
    block_d = triton.next_power_of_2(D)
    block_r = rows_per_program(R, block_d, x.device)
    grid = (triton.cdiv(R, block_r),)
    with on_device(x):
        _adaln_modulate_kernel[grid](x, shift, scale, y, R, D, tokens_per_frame, eps,
                                     BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4 if block_d <= 1024 else 8)
    return y
