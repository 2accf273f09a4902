"""Step lists for rectified-flow sampling: decreasing times from 1 (noise) to 0 (data)."""
from __future__ import annotations

from typing import Sequence

import torch


def flow_step_list(num_steps: int, shift: float = 1.0) -> list[float]:
    """num_steps + 1 times from 1 to 0, uniform, optionally shifted (t' = s t / (1 + (s - 1) t), s > 1 spends more steps near noise)."""
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, got {num_steps}")
    ts = [1.0 - i / num_steps for i in range(num_steps + 1)]
    if shift != 1.0:
        ts = [shift * t / (1 + (shift - 1) * t) for t in ts]
    ts[0], ts[-1] = 1.0, 0.0
    return ts


def as_step_list(steps: int | Sequence[float], shift: float = 1.0) -> list[float]:
    """An int (number of Euler steps) or an explicit list of times -> validated list from high to low."""
    if isinstance(steps, int):
        return flow_step_list(steps, shift)
    ts = [float(t) for t in steps]
    if len(ts) < 2:
        raise ValueError(f"steps: expected at least 2 times (start and end), got {ts}")
    if any(b >= a for a, b in zip(ts, ts[1:])) or ts[0] > 1.0 or ts[-1] < 0.0:
        raise ValueError(f"steps: expected strictly decreasing times in [0, 1], got {ts}")
    return ts


def step_tensor(steps: int | Sequence[float], device: torch.device | str = "cpu", shift: float = 1.0) -> torch.Tensor:
    """The step list as a float32 tensor on `device` (index it on device: no host sync in the sampler)."""
    return torch.tensor(as_step_list(steps, shift), dtype=torch.float32, device=device)
