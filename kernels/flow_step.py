"""Triton kernel: in-place Euler step x[:, c:] += (t_next - t_now) * v[:, c:] for all trajectories.

t_now/t_next are either per-trajectory tensors (numel B, or 1 broadcast) or scalars; context frames
are never touched.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import flat_block, flat_offsets, on_device


@triton.jit
def _flow_step_kernel(x_ptr, v_ptr, tnow_ptr, tnext_ptr, tnow_val, tnext_val, tnow_stride, tnext_stride,
                      N_pred, per_b, TS, ctx_off,
                      HAS_TNOW: tl.constexpr, HAS_TNEXT: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    offs = flat_offsets(BLOCK, IDX64)
    m = offs < N_pred
    b = offs // per_b
    addr = b * TS + ctx_off + offs % per_b
    if HAS_TNOW:
        tn = tl.load(tnow_ptr + b * tnow_stride, mask=m, other=0.0).to(tl.float32)
    else:
        tn = tnow_val
    if HAS_TNEXT:
        tx = tl.load(tnext_ptr + b * tnext_stride, mask=m, other=0.0).to(tl.float32)
    else:
        tx = tnext_val
    x = tl.load(x_ptr + addr, mask=m, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + addr, mask=m, other=0.0).to(tl.float32)
    tl.store(x_ptr + addr, (x + (tx - tn) * v).to(x_ptr.dtype.element_ty), mask=m)


def flow_step_(x, v, t_now, t_next, t_now_value: float, t_next_value: float, num_context: int) -> None:
    """x must be contiguous (it is updated in place)."""
    v = v.contiguous()
    B, T = x.shape[:2]
    if B == 0 or T <= num_context or x.numel() == 0:
        return
    S = x.numel() // (B * T)
    per_b = (T - num_context) * S
    n_pred = B * per_b
    tn = t_now.to(torch.float32).reshape(-1).contiguous() if t_now is not None else x
    tx = t_next.to(torch.float32).reshape(-1).contiguous() if t_next is not None else x
    block = flat_block(n_pred, x.device)
    with on_device(x):
        _flow_step_kernel[(triton.cdiv(n_pred, block),)](
            x, v, tn, tx, float(t_now_value), float(t_next_value),
            0 if t_now is None or tn.numel() == 1 else 1, 0 if t_next is None or tx.numel() == 1 else 1,
            n_pred, per_b, T * S, num_context * S,
            HAS_TNOW=t_now is not None, HAS_TNEXT=t_next is not None, BLOCK=block,
            IDX64=x.numel() + block >= 2**31)
