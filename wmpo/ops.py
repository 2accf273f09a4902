"""Public API of wmpo's fused ops and their plain-PyTorch references (*_ref).

Exact semantics (shapes contiguous, last dim D); see README "Ops".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def adaln_modulate_ref(x, shift, scale, *, tokens_per_frame: int, eps: float = 1e-6):
    """y = layer_norm(x) * (1 + scale[f]) + shift[f], f = row // tokens_per_frame. x [R, D]; shift/scale [F, D]."""
    n = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    sc = scale.float().repeat_interleave(tokens_per_frame, 0)
    sh = shift.float().repeat_interleave(tokens_per_frame, 0)
    return (n * (1 + sc) + sh).to(x.dtype)


def gated_residual_adaln_ref(residual, y, gate, shift, scale, *, tokens_per_frame: int, eps: float = 1e-6):
    """out = residual + gate[f] * y; h = layer_norm(out) * (1 + scale[f]) + shift[f]. Returns (out, h)."""
    g = gate.float().repeat_interleave(tokens_per_frame, 0)
    out = (residual.float() + g * y.float()).to(residual.dtype)
    h = adaln_modulate_ref(out, shift, scale, tokens_per_frame=tokens_per_frame, eps=eps)
    return out, h


def noisy_context_ref(x0, noise, t, *, num_context: int, t_context: float):
    """Rectified-flow noising with context frames at t_context. x0/noise [B, T, ...], t [B]. Returns (x_t, t_frames [B, T])."""
    B, T = x0.shape[:2]
    tf = t.float().view(B, 1).expand(B, T).clone()
    tf[:, :num_context] = t_context
    w = tf.view(B, T, *([1] * (x0.dim() - 2)))
    xt = ((1 - w) * x0.float() + w * noise.float()).to(x0.dtype)
    return xt, tf


def flow_step_ref(x, v, t_now, t_next, *, num_context: int):
    """In place: x[:, c:] += (t_next - t_now) * v[:, c:]. t_now/t_next: [B] tensors or floats. Returns x."""
    B = x.shape[0]
    dt = torch.as_tensor(t_next, dtype=torch.float32, device=x.device) - torch.as_tensor(t_now, dtype=torch.float32, device=x.device)
    dt = dt.expand(B) if dt.dim() == 0 else dt
    dt = dt.view(B, *([1] * (x.dim() - 1)))
    x[:, num_context:] = (x[:, num_context:].float() + dt * v[:, num_context:].float()).to(x.dtype)
    return x


def action_logprob_ref(logits, tokens, *, temperature: float = 1.0):
    """(logp, entropy) per token of softmax(logits / temperature). logits [..., 256], tokens [...] int64."""
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    p = torch.softmax(z, dim=-1)
    ent = lse - (p * z).sum(-1)
    return logp, ent


# Until the dispatching implementations land, the public API is the reference.
adaln_modulate = adaln_modulate_ref
gated_residual_adaln = gated_residual_adaln_ref
noisy_context = noisy_context_ref
flow_step = flow_step_ref
action_logprob = action_logprob_ref
