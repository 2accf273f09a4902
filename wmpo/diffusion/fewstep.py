"""The fused few-step path of rectified-flow sampling with a context-cached world model.

At 1-4 steps the per-step overhead is a large share of a step: the timestep (and step-size) embedding,
the per-frame AdaLN modulation of every block, unpatchifying the output, the Euler update and
patchifying the next input. This path does the first two once for all steps (`step_modulation`: one
batched pass over every step's time and step size and the actions, one matmul for all blocks) and the
last three in one fused op per step (`wmpo.ops.flow_step_patchify`). Same math as
`FlowMatchEulerSampler` driving `forward_cached` (tests/test_fewstep.py checks it).
"""
from __future__ import annotations

from typing import Any

import torch

from wmpo import ops
from wmpo.ops.flow_step_patchify import patchify_ref

FUSED_MAX_STEPS = 4
"""default step count up to which samplers take the fused path: the precomputed modulation holds
steps x frames x (blocks x 6 + 2) x D values (at the paper's size, ~0.8 GB per step for 64 x 8 frames)"""


@torch.no_grad()
def fused_euler_sample_cached(model: Any, x: torch.Tensor, timesteps: torch.Tensor, actions: torch.Tensor,
                              cache: dict[str, Any]) -> torch.Tensor:
    """Integrate the predicted frames x [B, K, C, h, w] (in place, fp32 sampler state) along timesteps
    [S + 1] (1 -> 0) with the world model's cached denoiser; actions [B, K, A]. Returns x.

    model: a WorldModel (or a wrapper exposing step_modulation / forward_patches_cached)."""
    p = model.cfg.patch
    mods = model.step_modulation(timesteps, actions)  # [S, B*K, M], every step at once
    patches = patchify_ref(x, p).contiguous()
    for i in range(timesteps.shape[0] - 1):
        v = model.forward_patches_cached(patches, mods[i], cache)
        patches = ops.flow_step_patchify(x, v.to(x.dtype), timesteps[i], timesteps[i + 1], patch=p)
    return x
