"""Samplers with one contract, in the diffusers style: `set_timesteps(...)` then, for i in
range(len(sampler)), `sample = sampler.step(model_output, i, sample)` (in place on `sample`).
The model is evaluated at `sampler.timesteps[i]`.

FlowMatchEulerSampler: rectified flow, x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0,
so dx/dt = v and an Euler step from t_now to t_next is x += (t_next - t_now) v (the fused
`wmpo.ops.flow_step`, frames >= num_context only). 30 steps and 1-4 steps share this one path.
A step-conditioned (shortcut) student reads the size of the step it is about to take,
`sampler.step_size(i)` = t[i] - t[i + 1]; its output is then the average velocity over that step, and
the same Euler update applies (plain flow models ignore the step size). The fused few-step path of a
context-cached world model (modulation of all steps at once, update fused with the next input) is
`wmpo.diffusion.fewstep`.
DDIMSampler: deterministic DDIM (eta = 0) for epsilon-prediction models.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from wmpo import ops
from wmpo.diffusion.schedules import step_tensor


class FlowMatchEulerSampler:
    """Euler steps along an explicit list of flow times from 1 (noise) to 0 (data)."""

    def __init__(self, num_context: int = 0, shift: float = 1.0):
        self.num_context = num_context
        self.shift = shift
        self.timesteps: torch.Tensor | None = None  # float32 [N + 1] on the sampling device

    def set_timesteps(self, steps: int | Sequence[float] | torch.Tensor, device: torch.device | str = "cpu") -> None:
        """steps: a number of Euler steps, or the explicit decreasing times (a list or a tensor)."""
        self.timesteps = steps.to(device, torch.float32) if isinstance(steps, torch.Tensor) else step_tensor(steps, device, self.shift)

    def __len__(self) -> int:
        return 0 if self.timesteps is None else self.timesteps.shape[0] - 1

    def step_size(self, index: int) -> torch.Tensor:
        """The size d = t[index] - t[index + 1] > 0 of step `index` (0-d device tensor): what a
        step-conditioned model reads next to t[index]."""
        ts = self.timesteps
        return ts[index] - ts[index + 1]

    def step(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """sample += (t[index + 1] - t[index]) * v on frames >= num_context, in place; returns sample."""
        ts = self.timesteps
        return ops.flow_step(sample, model_output, ts[index], ts[index + 1], num_context=self.num_context)


class DDIMSampler:
    """Deterministic DDIM over integer timesteps (decreasing, e.g. 999 .. 0) of a discrete schedule."""

    def __init__(self, alphas_cumprod: torch.Tensor, num_context: int = 0):
        self.alphas_cumprod = alphas_cumprod
        self.num_context = num_context
        self.timesteps: list[int] = []
        self._ac: torch.Tensor | None = None

    def set_timesteps(self, timesteps: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.timesteps = [int(t) for t in timesteps]
        self._ac = self.alphas_cumprod.to(device, torch.float32)

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """One DDIM step from timesteps[index] to the next (or to clean data after the last), in place."""
        ac, ts, c = self._ac, self.timesteps, self.num_context
        a_t = ac[ts[index]]
        a_prev = ac[ts[index + 1]] if index + 1 < len(ts) else torch.ones((), device=sample.device)
        xf = sample[:, c:].float()
        e = model_output.float()[:, c:]
        x0 = (xf - (1 - a_t).sqrt() * e) / a_t.sqrt()
        sample[:, c:] = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e).to(sample.dtype)
        return sample


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    steps: int | Sequence[float] | torch.Tensor,
    *,
    num_context: int = 0,
) -> torch.Tensor:
    """Integrate x [B, T, ...] in place from t=steps[0] to steps[-1] (FlowMatchEulerSampler).

    velocity_fn(x, t_now [0-dim device tensor]) -> v shaped like x. Frames < num_context are left untouched.
    """
    sampler = FlowMatchEulerSampler(num_context=num_context)
    sampler.set_timesteps(steps, x.device)
    for i in range(len(sampler)):
        x = sampler.step(velocity_fn(x, sampler.timesteps[i]), i, x)
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
    sampler = DDIMSampler(alphas_cumprod, num_context=num_context)
    sampler.set_timesteps(timesteps, x.device)
    for i, t in enumerate(sampler.timesteps):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x = sampler.step(eps_fn(x, tt), i, x)
    return x
