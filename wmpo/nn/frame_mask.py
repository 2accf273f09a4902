"""frame_modulation: per-frame modulation from a context-frame mask (STDiT3's ``x_mask``).

Open-Sora's STDiT3 modulates context frames with the timestep-0 vectors (``t0``) and generated
frames with the sampled timestep's (``t``), by computing both modulated token tensors and picking
per frame (``t_mask_select``): two full passes over the tokens. Picking on the small vectors
instead gives one [B, T, D] modulation that the fused ops apply in one pass."""
from __future__ import annotations

import torch
from torch import Tensor

from wmpo.utils.checks import check_tensor


def frame_modulation(mask: Tensor, mod: Tensor, mod_zero: Tensor) -> Tensor:
    """[B, T, D]: mod[b] where mask[b, t] (a generated frame) else mod_zero[b] (a context frame).
    mask [B, T] bool; mod / mod_zero [B, D] or [B, 1, D] (Open-Sora's chunks of the 6-way table)."""
    check_tensor("mask", mask, ndim=2, dtype=torch.bool)
    B = mask.shape[0]
    mod, mod_zero = (m.squeeze(1) if m.dim() == 3 and m.shape[1] == 1 else m for m in (mod, mod_zero))
    check_tensor("mod", mod, ndim=2, floating=True, shape=(B, None))
    check_tensor("mod_zero", mod_zero, ndim=2, floating=True, shape=tuple(mod.shape))
    return torch.where(mask.unsqueeze(-1), mod.unsqueeze(1), mod_zero.unsqueeze(1))
