"""Reward model: a VideoMAE encoder (transformers, random init) + linear head on 8-frame clips.

A clip c_i = frames[i-7 .. i] ends at frame i. A trajectory is a success if any clip's probability
exceeds `threshold` (chosen on a validation split by F1 and stored in the checkpoint).

Windows before 8 frames exist are LEFT-PADDED WITH THE TRAJECTORY'S FIRST FRAME, the same way in
training (clip sampling clamps indices at 0) and inference (`score_windows(pad=True)` and
`IncrementalSuccess`, whose history starts as 7 copies of the first frame). So every new frame
completes exactly one window, and the incremental detector scores K windows per chunk.

Frame indices: the first frame (the one given to `reset_slots`) is frame 0; the frame produced by
action t is frame t + 1. `first_success_frame` is reported as the step index t (the 0-based count of
frames passed to `update` since the reset), so t + 1 is comparable to Episode.finish_step (the index of
the first solved frame); for the first chunk it equals the index within that chunk (what
wmpo.rollout.engine expects; its trajectory length on success is t + 1).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint
from wmpo.utils.checks import check_tensor
from wmpo.utils.frames import resize


@dataclass
class RewardConfig:
    clip_len: int = 8
    """L, frames per clip (paper: 8)"""
    image_size: int = 224
    """frames are resized on the device to image_size x image_size"""
    patch_size: int = 16
    """VideoMAE spatial patch size"""
    tubelet_size: int = 2
    """VideoMAE temporal patch size"""
    hidden_size: int = 384
    """VideoMAE width (paper: VideoMAE; ViT-S width by default here)"""
    num_layers: int = 12
    """VideoMAE depth"""
    num_heads: int = 6
    """attention heads"""
    mlp_ratio: float = 4.0
    """MLP width / hidden_size"""
    dropout: float = 0.0
    """hidden dropout inside VideoMAE"""
    threshold: float = 0.5
    """initial success threshold on clip probability (replaced by the F1-selected one after training)"""
    score_batch_size: int = 256
    """max clips per forward in score_windows (memory bound)"""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RewardConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RewardModel(nn.Module):
    """VideoMAE encoder + mean pool + LayerNorm + Linear -> success logit per clip."""

    def __init__(self, cfg: RewardConfig | None = None):
        super().__init__()
        from transformers import VideoMAEConfig, VideoMAEModel

        cfg = cfg or RewardConfig()
        self.cfg = cfg
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size: expected a multiple of patch_size {cfg.patch_size}, got {cfg.image_size}")
        if cfg.clip_len % cfg.tubelet_size:
            raise ValueError(f"clip_len: expected a multiple of tubelet_size {cfg.tubelet_size}, got {cfg.clip_len}")
        mae_cfg = VideoMAEConfig(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_channels=3,
            num_frames=cfg.clip_len,
            tubelet_size=cfg.tubelet_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=int(cfg.hidden_size * cfg.mlp_ratio),
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=0.0,
            use_mean_pooling=True,  # no final LayerNorm inside; we pool + norm here
        )
        mae_cfg._attn_implementation = "sdpa"
        self.encoder = VideoMAEModel(mae_cfg)
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.head = nn.Linear(cfg.hidden_size, 1)
        nn.init.zeros_(self.head.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        self.register_buffer("threshold", torch.tensor(float(cfg.threshold)))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def clip_len(self) -> int:
        return self.cfg.clip_len

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """float [..., 3, H, W] in [-1, 1] -> model dtype at image_size (on the frames' device)."""
        return resize(frames.float(), self.cfg.image_size).to(self.head.weight.dtype)  # resized in fp32 (bf16 lacks it on CPU)

    def forward(self, clips: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        """clips float [N, L, 3, H, W] in [-1, 1] -> logits [N] (float32)."""
        check_tensor("clips", clips, ndim=5, floating=True)
        if clips.shape[1] != self.cfg.clip_len or clips.shape[2] != 3:
            raise ValueError(f"clips: expected shape [N, {self.cfg.clip_len}, 3, H, W], got {tuple(clips.shape)}")
        x = clips.to(self.head.weight.dtype) if prepared else self.prepare(clips)
        h = self.encoder(pixel_values=x).last_hidden_state.mean(1)
        return self.head(self.norm(h)).squeeze(-1).float()

    def _probs_chunked(self, clips: torch.Tensor) -> torch.Tensor:
        """prepared clips [M, L, 3, S, S] -> probs [M], at most score_batch_size per forward."""
        bs = max(1, int(self.cfg.score_batch_size))
        if clips.shape[0] <= bs:
            return torch.sigmoid(self(clips, prepared=True))
        return torch.cat([torch.sigmoid(self(clips[i : i + bs], prepared=True)) for i in range(0, clips.shape[0], bs)])

    @torch.no_grad()
    def score_windows(self, frames: torch.Tensor, pad: bool = False) -> torch.Tensor:
        """Success probability of every stride-1 window, many trajectories at once.

        frames float [B, T, 3, H, W] -> probs [B, T - L + 1] for the windows ending at frames
        L-1 .. T-1; with pad=True, frames are left-padded with L-1 copies of frame 0 and the result
        is [B, T] (window ending at every frame).
        """
        check_tensor("frames", frames, ndim=5, floating=True)
        L = self.cfg.clip_len
        x = self.prepare(frames)  # resize T frames once, not every window
        if pad:
            x = torch.cat([x[:, :1].expand(-1, L - 1, -1, -1, -1), x], dim=1)
        B, T = x.shape[:2]
        if T < L:
            raise ValueError(f"frames: expected at least {L} frames (or pad=True), got shape {tuple(frames.shape)}")
        W = T - L + 1
        win = x.unfold(1, L, 1)  # [B, W, 3, S, S, L]
        win = win.permute(0, 1, 5, 2, 3, 4).reshape(B * W, L, *x.shape[2:])
        return self._probs_chunked(win).view(B, W)

    @torch.no_grad()
    def classify(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trajectory verdicts, windows left-padded and scored at every frame after the first.

        frames [B, T, 3, H, W] (frame 0 = initial); lengths [B] frames per trajectory (default T).
        -> (success [B] bool, first_success_frame [B] int64 step index or -1, max_prob [B]).
        """
        probs = self.score_windows(frames, pad=True)[:, 1:]  # windows ending at frames 1..T-1
        B, W = probs.shape
        if lengths is not None:
            valid = torch.arange(W, device=probs.device)[None] < (lengths.to(probs.device).view(B, 1) - 1)
            probs = torch.where(valid, probs, torch.zeros_like(probs))
        hit = probs > self.threshold
        success = hit.any(1)
        first = torch.where(success, hit.to(torch.int64).argmax(1), torch.full_like(success, -1, dtype=torch.int64))
        return success, first, probs.amax(1) if W > 0 else torch.zeros(B, device=probs.device)


class IncrementalSuccess:
    """Streaming success detector for batched rollouts (continuous batching, no host sync).

    Keeps, per slot, the last L-1 frames (already resized to the model's image size), whether the
    slot has succeeded and its first success step. `update` scores exactly the windows the new
    frames complete (K per call).
    """

    def __init__(self, reward_model: RewardModel, batch_size: int, device: torch.device | str | None = None):
        self.model = reward_model
        self.device = torch.device(device) if device is not None else reward_model.device
        self.model.to(self.device).eval()
        L, S = reward_model.cfg.clip_len, reward_model.cfg.image_size
        dt = reward_model.head.weight.dtype
        B = int(batch_size)
        self.batch_size = B
        self.history = torch.zeros(B, L - 1, 3, S, S, dtype=dt, device=self.device)
        self.num_frames = torch.zeros(B, dtype=torch.int64, device=self.device)  # frames seen incl. the first
        self.success = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.first_success = torch.full((B,), -1, dtype=torch.int64, device=self.device)
        self.last_probs: torch.Tensor | None = None

    @property
    def threshold(self) -> torch.Tensor:
        return self.model.threshold

    def reset_slots(self, mask: torch.Tensor, first_frames: torch.Tensor) -> None:
        """Start new trajectories in the slots where `mask` [B] bool; first_frames float [B, 3, H, W]."""
        B = self.batch_size
        check_tensor("mask", mask, dtype=torch.bool, shape=(B,))
        check_tensor("first_frames", first_frames, ndim=4, floating=True)
        if first_frames.shape[0] != B or first_frames.shape[1] != 3:
            raise ValueError(f"first_frames: expected shape [{B}, 3, H, W], got {tuple(first_frames.shape)}")
        m = mask.to(self.device)
        f = self.model.prepare(first_frames.to(self.device))
        self.history.copy_(torch.where(m.view(B, 1, 1, 1, 1), f[:, None].expand_as(self.history), self.history))
        self.num_frames.copy_(torch.where(m, torch.ones_like(self.num_frames), self.num_frames))
        self.success.logical_and_(~m)
        self.first_success.copy_(torch.where(m, torch.full_like(self.first_success, -1), self.first_success))

    @torch.no_grad()
    def update(self, new_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """new_frames float [B, K, 3, H, W] -> (success [B] bool, first_success_frame [B] int64).

        Both are cumulative since the slot's reset: success stays True, first_success_frame is the
        step index of the first frame that completed a window above threshold (-1 if none).
        """
        B = self.batch_size
        check_tensor("new_frames", new_frames, ndim=5, floating=True)
        if new_frames.shape[0] != B or new_frames.shape[2] != 3:
            raise ValueError(f"new_frames: expected shape [{B}, K, 3, H, W], got {tuple(new_frames.shape)}")
        K = new_frames.shape[1]
        L = self.model.cfg.clip_len
        x = self.model.prepare(new_frames.to(self.device))
        seq = torch.cat([self.history, x], dim=1)  # [B, L-1+K, 3, S, S]
        win = seq.unfold(1, L, 1).permute(0, 1, 5, 2, 3, 4).reshape(B * K, L, *seq.shape[2:])
        probs = self.model._probs_chunked(win).view(B, K)
        self.last_probs = probs
        hit = probs > self.model.threshold
        any_hit = hit.any(1)
        step0 = self.num_frames - 1  # step index of the first new frame
        first_new = step0 + hit.to(torch.int64).argmax(1)
        newly = any_hit & ~self.success
        self.first_success.copy_(torch.where(newly, first_new, self.first_success))
        self.success.logical_or_(any_hit)
        self.history.copy_(seq[:, -(L - 1) :])
        self.num_frames.add_(K)
        return self.success.clone(), self.first_success.clone()


# ---------------------------------------------------------------------- threshold / metrics
def select_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold on trajectory scores (max window prob) maximizing F1 of `scores > thr` -> (thr, f1).

    Candidates are midpoints between consecutive distinct scores (and just below the lowest);
    among ties the largest margin interval's midpoint wins.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"scores/labels: expected equal non-empty shapes, got {s.shape} and {y.shape}")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [min(u[-1] + 1e-6, 1.0)]])
    best_f1, best_gap, best_t = -1.0, -1.0, 0.5
    for t in cands:
        f1 = prf1(s > t, y)[2]
        lower = s[s <= t].max() if (s <= t).any() else t
        upper = s[s > t].min() if (s > t).any() else t
        gap = upper - lower
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and gap > best_gap):
            best_f1, best_gap, best_t = f1, gap, float(t)
    return best_t, best_f1


def prf1(pred: np.ndarray, label: np.ndarray) -> tuple[float, float, float]:
    """precision, recall, F1 of boolean predictions (0 where undefined)."""
    p = np.asarray(pred).astype(bool)
    y = np.asarray(label).astype(bool)
    tp = float((p & y).sum())
    fp = float((p & ~y).sum())
    fn = float((~p & y).sum())
    prec = tp / (tp + fp) if tp + fp > 0 else 0.0
    rec = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return prec, rec, f1


# ---------------------------------------------------------------------- checkpoints
def save_reward(path: str | os.PathLike, model: RewardModel, **extra: Any) -> None:
    """Atomically write {config, weights (incl. the threshold buffer), threshold} (+ `extra`)."""
    state = {"kind": "wmpo.reward_model", "config": asdict(model.cfg), "model": model.state_dict(), "threshold": float(model.threshold)}
    state.update(extra)
    save_checkpoint(path, state)


def load_reward(path: str | os.PathLike, device: torch.device | str | None = "cpu") -> RewardModel:
    """-> RewardModel in eval mode on `device`, threshold restored."""
    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "wmpo.reward_model":
        raise ValueError(f"path: expected a wmpo reward checkpoint (kind 'wmpo.reward_model'), got kind {state.get('kind')!r} in {path}")
    model = RewardModel(RewardConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device if device is not None else "cpu").eval()


__all__ = ["IncrementalSuccess", "RewardConfig", "RewardModel", "load_reward", "prf1", "save_reward", "select_threshold"]
