"""Triton kernel: log-prob of the chosen token and entropy of softmax(logits / temperature).

A program handles BLOCK_R rows of V (256) logits in registers: max, sum of exp, gather by
comparison; it writes two floats per row and never builds anything larger than the logits.
Masked bins (-inf) count as probability 0; a row whose log-sum-exp is not finite gives NaN.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import rows_per_program, on_device


@triton.jit
def _action_logprob_kernel(l_ptr, tok_ptr, logp_ptr, ent_ptr, N, V, inv_t,
                           BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_V)
    rm = rows < N
    mask = rm[:, None] & (cols < V)[None, :]
    z = tl.load(l_ptr + rows.to(tl.int64)[:, None] * V + cols[None, :], mask=mask, other=0.0).to(tl.float32) * inv_t
    z = tl.where(mask, z, float("-inf"))
    m = tl.max(z, axis=1)
    m = tl.where(rm, m, 0.0)
    e = tl.where(mask, tl.exp(z - m[:, None]), 0.0)
    se = tl.sum(e, axis=1)
    se = tl.where(rm, se, 1.0)
    lse = m + tl.log(se)
    # masked bins (-inf) have p = 0 and add 0 to sum p z (0 * -inf would be NaN)
    spz = tl.sum(tl.where(e > 0.0, e * z, 0.0), axis=1) / se
    tok = tl.load(tok_ptr + rows, mask=rm, other=0)
    zt = tl.sum(tl.where(cols[None, :] == tok[:, None], z, 0.0), axis=1)
    ok = (tok >= 0) & (tok < V)
    finite = tl.abs(lse) < float("inf")  # False for +inf / NaN logits or an all-masked row
    tl.store(logp_ptr + rows, tl.where(ok & finite, zt - lse, float("nan")), mask=rm)
    tl.store(ent_ptr + rows, tl.where(finite, lse - spz, float("nan")), mask=rm)


def action_logprob(logits, tokens, temperature: float):
    logits = logits.contiguous()
    tokens = tokens.to(torch.int64).contiguous()
    V = logits.shape[-1]
    N = tokens.numel()
    logp = torch.empty(logits.shape[:-1], dtype=torch.float32, device=logits.device)
    ent = torch.empty_like(logp)
    if N == 0:
        return logp, ent
    block_v = triton.next_power_of_2(V)
    block_r = rows_per_program(N, block_v, logits.device)
    with on_device(logits):
        _action_logprob_kernel[(triton.cdiv(N, block_r),)](logits, tokens, logp, ent, N, V, 1.0 / temperature,
                                                           BLOCK_R=block_r, BLOCK_V=block_v, num_warps=4)
    return logp, ent
