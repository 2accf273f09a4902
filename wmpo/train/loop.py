"""What every training loop shares: the optimizer-loop settings and the learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint


@dataclass
class TrainLoopConfig:
    """Settings of an AdamW training loop (each trainer's config extends it with its model and data)."""

    steps: int = 20000
    """optimizer steps"""
    batch_size: int = 32
    """examples per optimizer step (frames, windows, (frame, chunk) samples or clips: see the trainer)"""
    lr: float = 1e-4
    """(peak) AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """max global gradient norm (0: off)"""
    log_every: int = 50
    """steps between TensorBoard scalars"""
    ckpt_every: int = 1000
    """steps between resumable checkpoints"""
    seed: int = 0
    """seed for init, splits and sampling"""


@dataclass
class ScheduledTrainConfig(TrainLoopConfig):
    """A loop with linear warmup then cosine decay, random-crop augmentation, periodic validation and AMP."""

    warmup_steps: int = 500
    """linear warmup steps, then cosine decay to lr * min_lr_ratio"""
    min_lr_ratio: float = 0.1
    """final lr / peak lr"""
    crop_pad: int = 4
    """random crop: shift by up to this many pixels at the model's image size (0: off)"""
    eval_every: int = 500
    """steps between validation passes (0: only at the end where the trainer supports it)"""
    amp: bool = True
    """bf16 autocast on CUDA"""


def warmup_cosine_lr(step: int, cfg: Any) -> float:
    """The learning rate at `step` (0-based): linear warmup over cfg.warmup_steps, then cosine decay
    from cfg.lr to cfg.lr * cfg.min_lr_ratio at cfg.steps (cfg: any config with those four fields)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / max(1, cfg.warmup_steps)
    p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, grad_clip: float) -> torch.Tensor:
    """zero_grad, backward, clip the global gradient norm (when grad_clip > 0), step. -> the norm
    before clipping (0 when not clipped)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else torch.zeros(())
    opt.step()
    return gnorm


def amp_dtype(cfg: ScheduledTrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA when cfg.amp, else none."""
    return torch.bfloat16 if (cfg.amp and device.type == "cuda") else None


class LoopState:
    """A loop's resumable state in one file: model and optimizer weights, the step, and the numpy
    (batch sampling) and torch RNG states, saved atomically and restored on resume."""

    def __init__(self, path: Path, model_key: str, model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int):
        self.path, self.model_key, self.model, self.opt = Path(path), model_key, model, opt
        self.rng = np.random.default_rng(seed + 1)

    def resume(self) -> int:
        """Restore from the file when it exists; -> the step to continue from (0 without a file)."""
        if not self.path.is_file():
            return 0
        st = load_checkpoint(self.path, map_location="cpu")
        self.model.load_state_dict(st[self.model_key])
        self.opt.load_state_dict(st["optimizer"])
        self.rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
        return int(st["step"])

    def save(self, step: int) -> None:
        save_checkpoint(self.path, {self.model_key: self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": step,
                                    "np_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()})
