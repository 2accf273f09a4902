"""Frame format conversions, on whatever device the frames live.

Conventions used across wmpo:
  * real/env frames: uint8 [..., H, W, 3] (HWC, 0..255), as rendered and stored in HDF5;
  * model frames: float [..., 3, H, W] in [-1, 1] (CHW), what the VAE encodes/decodes and the
    policy and reward model consume.
"""
from __future__ import annotations

import torch


def uint8_to_model(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames: expected dtype torch.uint8, got {frames.dtype}")
    if frames.dim() < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape [..., H, W, 3], got {tuple(frames.shape)}")
    x = frames.movedim(-1, -3).to(dtype)
    return x / 127.5 - 1.0


def model_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (clamped)."""
    if not frames.is_floating_point():
        raise ValueError(f"frames: expected a floating-point tensor, got {frames.dtype}")
    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames: expected shape [..., 3, H, W], got {tuple(frames.shape)}")
    x = ((frames.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous()


def resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of float [..., 3, H, W] frames to size x size, on device."""
    if frames.shape[-1] == size and frames.shape[-2] == size:
        return frames
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:])
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.reshape(*lead, *x.shape[-3:])
