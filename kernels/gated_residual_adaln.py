"""Triton kernel: out = residual + gate[f] * y; h = layer_norm(out) * (1 + scale[f]) + shift[f].

One pass: out is rounded to the residual dtype (as the reference does) before it is normalized.
Loads are upcast to fp32 right away.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import rows_per_program, on_device


@triton.jit
def _gated_residual_adaln_kernel(res_ptr, y_ptr, gate_ptr, shift_ptr, scale_ptr, out_ptr, h_ptr, R, D, tpf, eps,
                                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    poffs = (rows // tpf).to(tl.int64)[:, None] * D + cols[None, :]
    res = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    yv = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + poffs, mask=mask, other=0.0).to(tl.float32)
    out = (res + g * yv).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, out, mask=mask)
    o = out.to(tl.float32)
    mean = tl.sum(o, axis=1) / D
    oc = tl.where(mask, o - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(oc * oc, axis=1) / D + eps)
    sh = tl.load(shift_ptr + poffs, mask=mask, other=0.0).to(tl.float32)
    sc = tl.load(scale_ptr + poffs, mask=mask, other=0.0).to(tl.float32)
    h = oc * rstd[:, None] * (1.0 + sc) + sh
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)


def gated_residual_adaln(residual, y, gate, shift, scale, tokens_per_frame: int, eps: float):
    residual, y, gate = residual.contiguous(), y.contiguous(), gate.contiguous()
    shift, scale = shift.contiguous(), scale.contiguous()
    R, D = residual.shape
    out, h = torch.empty_like(residual), torch.empty_like(residual)
    if R == 0:
        return out, h
    block_d = triton.next_power_of_2(D)
    block_r = rows_per_program(R, block_d, residual.device)
    grid = (triton.cdiv(R, block_r),)
    with on_device(residual):
        _gated_residual_adaln_kernel[grid](residual, y, gate, shift, scale, out, h, R, D, tokens_per_frame, eps,
                                           BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4 if block_d <= 1024 else 8)
    return out, h
