"""Triton kernel: x [B, T, C, H, W] += (t_next - t_now) * unpatchify(v [B*T*N, C*p*p]) in place, and the
updated x written as patches (the next step's input) in the same pass. One program per block of patch
elements; t_now/t_next are per-trajectory tensors (numel B, or 1 broadcast) or scalars."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import flat_block, flat_offsets, on_device


@triton.jit
def _flow_step_patchify_kernel(x_ptr, v_ptr, out_ptr, tnow_ptr, tnext_ptr, tnow_val, tnext_val, tnow_stride, tnext_stride,
                               n, P, p, gh, gw, C, H, W, T,
                               HAS_TNOW: tl.constexpr, HAS_TNEXT: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    offs = flat_offsets(BLOCK, IDX64)
    m = offs < n
    r = offs // P
    f = offs % P
    gj = r % gw
    gi = (r // gw) % gh
    bt = r // (gh * gw)
    c = f // (p * p)
    pi = (f // p) % p
    pj = f % p
    addr = ((bt * C + c) * H + gi * p + pi) * W + gj * p + pj
    b = bt // T
    if HAS_TNOW:
        tn = tl.load(tnow_ptr + b * tnow_stride, mask=m, other=0.0).to(tl.float32)
    else:
        tn = tnow_val
    if HAS_TNEXT:
        tx = tl.load(tnext_ptr + b * tnext_stride, mask=m, other=0.0).to(tl.float32)
    else:
        tx = tnext_val
    x = tl.load(x_ptr + addr, mask=m, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s = (x + (tx - tn) * v).to(x_ptr.dtype.element_ty)
    tl.store(x_ptr + addr, s, mask=m)
    tl.store(out_ptr + offs, s, mask=m)


def flow_step_patchify_(x, v, t_now, t_next, t_now_value: float, t_next_value: float, patch: int) -> torch.Tensor:
    """x must be contiguous (it is updated in place); returns the patches [B*T*N, C*p*p] of the new x."""
    v = v.contiguous()
    B, T, C, H, W = x.shape
    p = int(patch)
    gh, gw, P = H // p, W // p, C * p * p
    out = torch.empty((B * T * gh * gw, P), dtype=x.dtype, device=x.device)
    n = out.numel()
    if n == 0:
        return out
    tn = t_now.to(torch.float32).reshape(-1).contiguous() if t_now is not None else x
    tx = t_next.to(torch.float32).reshape(-1).contiguous() if t_next is not None else x
    block = flat_block(n, x.device)
    with on_device(x):
        _flow_step_patchify_kernel[(triton.cdiv(n, block),)](
            x, v, out, tn, tx, float(t_now_value), float(t_next_value),
            0 if t_now is None or tn.numel() == 1 else 1, 0 if t_next is None or tx.numel() == 1 else 1,
            n, P, p, gh, gw, C, H, W, T,
            HAS_TNOW=t_now is not None, HAS_TNEXT=t_next is not None, BLOCK=block, IDX64=n + block >= 2**31)
    return out
