"""Triton kernel: rectified-flow noising with context frames at t_context, one pass.

x0/noise [B, T, S...] are read once, x_t written once; the per-frame times [B, T] are written by
the first programs of the same launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import flat_block, flat_offsets, on_device


@triton.jit
def _noisy_context_kernel(x0_ptr, noise_ptr, t_ptr, xt_ptr, tf_ptr, N, S, T, num_context, t_context,
                          BLOCK: tl.constexpr, IDX64: tl.constexpr):
    offs = flat_offsets(BLOCK, IDX64)
    m = offs < N
    row = offs // S
    b = row // T
    w = tl.where((row % T) < num_context, t_context, tl.load(t_ptr + b, mask=m, other=0.0).to(tl.float32))
    a = tl.load(x0_ptr + offs, mask=m, other=0.0).to(tl.float32)
    n = tl.load(noise_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(xt_ptr + offs, ((1.0 - w) * a + w * n).to(xt_ptr.dtype.element_ty), mask=m)
    # per-frame times: element i of [B*T] handled by program i // BLOCK
    fr = offs
    fm = fr < (N // S)
    fw = tl.where((fr % T) < num_context, t_context, tl.load(t_ptr + fr // T, mask=fm, other=0.0).to(tl.float32))
    tl.store(tf_ptr + fr, fw, mask=fm)


def noisy_context(x0, noise, t, num_context: int, t_context: float):
    x0, noise = x0.contiguous(), noise.contiguous()
    t = t.to(torch.float32).contiguous()
    B, T = x0.shape[:2]
    xt = torch.empty_like(x0)
    tf = torch.empty((B, T), dtype=torch.float32, device=x0.device)
    N = x0.numel()
    if N == 0:
        tf.copy_(torch.where(torch.arange(T, device=x0.device) < num_context, torch.full_like(tf, t_context), t.view(B, 1).expand(B, T)))
        return xt, tf
    S = N // (B * T)
    block = flat_block(N, x0.device)  # programs * block >= N >= B * T, so every tf entry is written
    grid = (triton.cdiv(N, block),)
    with on_device(x0):
        _noisy_context_kernel[grid](x0, noise, t, xt, tf, N, S, T, num_context, t_context, BLOCK=block,
                                    IDX64=N + block >= 2**31)
    return xt, tf
