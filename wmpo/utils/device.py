"""Device selection and seeding."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def default_device() -> torch.device:
    """cuda when available (and not disabled by WMPO_DEVICE), else cpu."""
    want = os.environ.get("WMPO_DEVICE")
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA, none (fp32) on CPU."""
    return torch.bfloat16 if device.type == "cuda" else None


def module_device(m) -> torch.device | None:
    """The device of a module's first parameter, or its `.device` attribute; None if it has neither."""
    if isinstance(m, torch.nn.Module):
        for p in m.parameters():
            return p.device
    d = getattr(m, "device", None)
    return torch.device(d) if d is not None else None


def policy_device(policy) -> torch.device:
    """Where a policy's parameters live (cpu for a parameter-less one)."""
    return module_device(policy) or torch.device("cpu")
