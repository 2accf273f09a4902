"""action_logprob: temperature, log-softmax over the 256 bins, gather, entropy; never materializes
more than [tokens, 256]. Reference, custom op + fake, backward, API."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from wmpo.ops import dispatch
from wmpo.utils.checks import check_same_device, check_tensor

NUM_BINS = 256


def action_logprob_ref(logits, tokens, *, temperature: float = 1.0):
    """(logp, entropy) per token of softmax(logits / temperature). logits [..., 256], tokens [...] int64.

    Masked bins (-inf logits) have probability 0 and add nothing to the entropy (finite). A row whose
    log-sum-exp is not finite (a +inf or NaN logit, or every bin masked) gives NaN logp and entropy,
    in every backend.
    """
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    p = torch.softmax(z, dim=-1)
    ent = lse - (p * torch.where(p > 0, z, torch.zeros_like(z))).sum(-1)
    bad = ~torch.isfinite(lse)
    nan = torch.full_like(lse, float("nan"))
    return torch.where(bad, nan, logp), torch.where(bad, nan, ent)


def action_logprob_backward_ref(g_logp, g_ent, logits, tokens, temperature):
    """d(logits) of (logp, entropy) given their gradients, in fp32 math."""
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    logp_all = z - lse
    p = logp_all.exp()
    logp_all = torch.where(p > 0, logp_all, torch.zeros_like(logp_all))  # masked bins: p log p = 0
    ent = -(p * logp_all).sum(-1, keepdim=True)
    dz = -g_logp.float().unsqueeze(-1) * p - g_ent.float().unsqueeze(-1) * p * (logp_all + ent)
    dz = dz.scatter_add(-1, tokens.unsqueeze(-1), g_logp.float().unsqueeze(-1))
    dz = torch.where(torch.isfinite(lse), dz, torch.full_like(dz, float("nan")))
    return (dz / temperature).to(logits.dtype)


def _impl(logits: Tensor, tokens: Tensor, temperature: float, backend: str) -> tuple[Tensor, Tensor]:
    be = dispatch.pick(backend, logits)
    if be == "triton":
        return dispatch.kernel("action_logprob").action_logprob(logits, tokens, temperature)
    if be in ("cpp", "cuda"):
        return tuple(dispatch.ext().action_logprob(logits, tokens, temperature))
    return action_logprob_ref(logits, tokens, temperature=temperature)


@torch.library.custom_op("wmpo::action_logprob", mutates_args=())
def _op(logits: Tensor, tokens: Tensor, temperature: float, backend: str) -> tuple[Tensor, Tensor]:
    return _impl(logits, tokens, temperature, backend)


@_op.register_fake
def _(logits, tokens, temperature, backend):
    shp = logits.shape[:-1]
    return logits.new_empty(shp, dtype=torch.float32), logits.new_empty(shp, dtype=torch.float32)


@torch.library.custom_op("wmpo::action_logprob_backward", mutates_args=())
def _backward_op(g_logp: Tensor, g_ent: Tensor, logits: Tensor, tokens: Tensor, temperature: float,
                 backend: str) -> Tensor:
    be = dispatch.pick(backend, logits)
    if be in ("cpp", "cuda"):
        return dispatch.ext().action_logprob_bwd(g_logp, g_ent, logits, tokens, temperature)
    return action_logprob_backward_ref(g_logp, g_ent, logits, tokens, temperature)


@_backward_op.register_fake
def _(g_logp, g_ent, logits, tokens, temperature, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    logits, tokens, temperature, backend = inputs
    ctx.save_for_backward(logits, tokens)
    ctx.args = (temperature, backend)


def _backward(ctx, g_logp, g_ent):
    logits, tokens = ctx.saved_tensors
    if g_logp is None:
        g_logp = logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    if g_ent is None:
        g_ent = logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return _backward_op(g_logp.contiguous(), g_ent.contiguous(), logits, tokens, *ctx.args), None, None, None


_op.register_autograd(_backward, setup_context=_setup)


def action_logprob(logits: Tensor, tokens: Tensor, *, temperature: float = 1.0,
                   backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(logp, entropy) fp32 per token of softmax(logits / temperature). logits [..., 256], tokens [...] int64.

    Token range is checked in eager mode on CPU tensors (on GPU it would need a host sync); an
    out-of-range token gives logp = NaN in the fused kernels.
    """
    check_tensor("logits", logits, floating=True)
    if logits.dim() < 1 or logits.shape[-1] != NUM_BINS:
        raise ValueError(f"logits: expected shape [..., {NUM_BINS}], got {tuple(logits.shape)}")
    check_tensor("tokens", tokens, dtype=(torch.int64, torch.int32), shape=tuple(logits.shape[:-1]))
    check_same_device(logits=logits, tokens=tokens)
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0
            or not math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a positive finite float, got {temperature!r}")
    if tokens.device.type == "cpu" and tokens.numel() and not torch.compiler.is_compiling():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= NUM_BINS:
            raise ValueError(f"tokens: expected values in [0, {NUM_BINS}), got range [{lo}, {hi}]")
    if dispatch.reference_forced() and not backend:
        return action_logprob_ref(logits, tokens.long(), temperature=float(temperature))
    op = _impl if dispatch.eager_direct(logits) else _op
    return op(logits, tokens.long(), float(temperature), backend or "")
