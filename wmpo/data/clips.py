"""Datasets for the VAE (single frames) and the world model (windows of c + K latent frames).

Window alignment (world model): frame i of an episode is the result of actions[i - 1]; frame 0 has no
producing action (zero vector). A window starting at frame s holds frames s .. s+c+K-1 and their producing
actions. Rollouts start from one real frame repeated c times with zero actions, so the training windows
include that padded start (s = -(c-1): frames clamp to frame 0, actions zero) besides every s >= 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from wmpo.data.episode import Episode
from wmpo.utils.frames import resize, uint8_to_model


def normalize_actions(actions: np.ndarray | torch.Tensor, stats: dict) -> torch.Tensor:
    """env actions [..., A] -> clip(2 (a - q01) / (q99 - q01) - 1, -1, 1) float32 (constant dims -> 0)."""
    a = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
    q01 = torch.as_tensor(np.asarray(stats["q01"]), dtype=torch.float32).reshape(-1)
    q99 = torch.as_tensor(np.asarray(stats["q99"]), dtype=torch.float32).reshape(-1)
    if a.shape[-1] != q01.shape[0]:
        raise ValueError(f"actions: expected last dim {q01.shape[0]} (len of q01), got shape {tuple(a.shape)}")
    span = torch.where(q99 - q01 > 1e-8, q99 - q01, torch.ones_like(q99))
    out = 2 * (a - q01) / span - 1
    out = torch.where(q99 - q01 > 1e-8, out, torch.zeros_like(out))
    return out.clamp(-1, 1)


def episode_frames(ep: Episode, size: int) -> torch.Tensor:
    """Episode frames uint8 [T+1, H, W, 3] -> model frames float [T+1, 3, size, size] in [-1, 1]."""
    return resize(uint8_to_model(torch.from_numpy(np.ascontiguousarray(ep.frames))), size)


class FrameDataset:
    """All frames of the given episodes (resized to `size`); random batches for VAE training."""

    def __init__(self, episodes: Sequence[Episode], size: int):
        if not episodes:
            raise ValueError("episodes: expected at least one episode, got none")
        self.frames = torch.cat([episode_frames(e, size) for e in episodes], 0)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(0, len(self), (batch,), generator=generator)
        return self.frames[idx]


class LatentWindowDataset:
    """Windows of c + K latent frames with their producing actions, from pre-encoded episodes.

    latents[i]: [T_i+1, C, h, w]; actions[i]: normalized [T_i, A].
    """

    def __init__(self, latents: Sequence[torch.Tensor], actions: Sequence[torch.Tensor], num_context: int, chunk_len: int,
                 pad_start: bool = True):
        self.c, self.K = num_context, chunk_len
        self.latents, self.actions, index = [], [], []
        for lat, act in zip(latents, actions):
            T = act.shape[0]
            if lat.shape[0] != T + 1:
                raise ValueError(f"latents: expected {T + 1} frames (actions + 1), got {lat.shape[0]}")
            if T < chunk_len:
                continue
            e = len(self.latents)
            # producing action per frame: zeros for frame 0
            self.latents.append(lat)
            self.actions.append(torch.cat([torch.zeros(1, act.shape[1]), act.float()], 0))
            starts = list(range(0, T + 2 - (num_context + chunk_len)))
            if pad_start and num_context > 1:
                starts = [-(num_context - 1)] + starts
            index += [(e, s) for s in starts]
        if not index:
            raise ValueError(f"episodes: none has at least chunk_len={chunk_len} actions")
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        e, s = self.index[i]
        n = self.c + self.K
        fi = torch.arange(s, s + n)
        lat = self.latents[e][fi.clamp(min=0)]
        act = self.actions[e][fi.clamp(min=0)]
        act = torch.where((fi < 1).view(-1, 1), torch.zeros_like(act), act)
        return lat, act

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x0 [B, c+K, C, h, w], actions [B, c+K, A])."""
        idx = torch.randint(0, len(self), (batch,), generator=generator).tolist()
        items = [self.get(i) for i in idx]
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


@torch.no_grad()
def encode_episodes(vae, episodes: Sequence[Episode], device: torch.device, max_batch: int = 64) -> list[torch.Tensor]:
    """VAE-encode every frame of every episode -> list of latents [T+1, C, h, w] on the CPU."""
    out = []
    for ep in episodes:
        fr = episode_frames(ep, vae.frame_size).to(device)
        out.append(vae.encode(fr, max_batch=max_batch).float().cpu())
    return out


def synthetic_episodes(n: int, length: int, size: int = 32, seed: int = 0, action_dim: int = 7) -> list[Episode]:
    """Tiny action-driven episodes for tests and smoke runs: a colored square moved by actions[:, :2]
    (frames[t+1] = square moved by actions[t]), on a fixed background. No simulator needed."""
    rng = np.random.default_rng(seed)
    eps = []
    sq = max(2, size // 6)
    for _ in range(n):
        pos = rng.uniform(sq, size - 2 * sq, size=2)
        color = rng.integers(120, 255, size=3)
        acts = rng.uniform(-1, 1, size=(length, action_dim)).astype(np.float32)
        frames = np.zeros((length + 1, size, size, 3), np.uint8)
        frames[:] = (30, 40, 60)
        for t in range(length + 1):
            y, x = int(pos[0]), int(pos[1])
            frames[t, y:y + sq, x:x + sq] = color
            if t < length:
                pos = np.clip(pos + acts[t, :2] * sq * 0.5, 0, size - sq)
        eps.append(Episode(frames=frames, actions=acts, states=np.zeros((length + 1, 1)), rewards=np.zeros(length, np.float32),
                           dones=np.zeros(length, bool), success=False, finish_step=length, instruction="move", task="synthetic"))
    return eps
