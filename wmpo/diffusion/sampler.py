"""Rectified-flow Euler sampler driven by an explicit step list (1 -> 0). 30 steps and 1-4 steps share one path.

Convention: x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0, so dx/dt = v and an Euler step
from t_now to t_next is x += (t_next - t_now) v (`wmpo.ops.flow_step`, in place, frames >= num_context).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from wmpo import ops
from wmpo.diffusion.schedules import step_tensor


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    steps: int | Sequence[float] | torch.Tensor,
    *,
    num_context: int = 0,
) -> torch.Tensor:
    """Integrate x [B, T, ...] in place from t=steps[0] to steps[-1].

    velocity_fn(x, t_now [0-dim device tensor]) -> v shaped like x. Frames < num_context are left untouched.
    """
    ts = steps if isinstance(steps, torch.Tensor) else step_tensor(steps, x.device)
    for i in range(ts.shape[0] - 1):
        v = velocity_fn(x, ts[i])
        ops.flow_step(x, v, ts[i], ts[i + 1], num_context=num_context)
    return x


def ddim_sample(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    *,
    num_context: int = 0,
) -> torch.Tensor:
    """Deterministic DDIM (eta=0) for epsilon-prediction models; timesteps decreasing (e.g. 999 .. 0)."""
    ac = alphas_cumprod.to(x.device, torch.float32)
    ts = list(timesteps)
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = eps_fn(x, tt).float()
        xf = x[:, num_context:].float()
        e = eps[:, num_context:]
        x0 = (xf - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x[:, num_context:] = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e).to(x.dtype)
    return x
