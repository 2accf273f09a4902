"""WorldModelVecEnv: the world model as a gymnasium-style vector environment any RL code can drive.

    env = WorldModelVecEnv(wm_env, detector, initial_frames, num_envs=8, max_chunks=16)
    obs, info = env.reset(seed=0)                        # obs [B, 3, H, W] float in [-1, 1]
    obs, reward, terminated, truncated, info = env.step(actions)   # actions [B, K, A]

One step is one action chunk (K actions -> K imagined frames). The reward comes from the reward
model (`wmpo.models.reward.IncrementalSuccess` over sliding windows of the imagined frames):
1.0 on the step whose frames first make a window cross the model's success threshold, else 0;
that step also sets `terminated`. `truncated` is set after `max_chunks` steps without success.
There is no automatic reset: rows that are done keep being imagined (reward 0, flags stay set)
until `reset(options={"mask": done})` restarts just them (or `reset()` restarts all).

Actions: `action_space="normalized"` (default) takes the world model's normalized actions in
[-1, 1]; `action_space="env"` takes actions in the simulator's units (a continuous-action policy)
and normalizes them with the world model's q01/q99 statistics (`wm_env.action_stats`), clipping to
[-1, 1] as in its training. Tensors or numpy arrays; outputs are torch tensors on the env's device.
gymnasium itself is not required (not a dependency); the method names and return tuples follow its
``VectorEnv`` so code written against it runs unchanged.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from wmpo.utils.checks import check_tensor

ACTION_SPACES = ("normalized", "env")


def _as_frames(frames) -> torch.Tensor:
    """uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1] -> float [N, 3, H, W]."""
    t = torch.as_tensor(frames)
    if t.dtype == torch.uint8:
        check_tensor("initial_frames", t, ndim=4)
        if t.shape[-1] != 3:
            raise ValueError(f"initial_frames: expected uint8 [N, H, W, 3], got {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2).float() / 127.5 - 1
    check_tensor("initial_frames", t, ndim=4, floating=True)
    if t.shape[1] != 3:
        raise ValueError(f"initial_frames: expected float [N, 3, H, W] in [-1, 1] or uint8 [N, H, W, 3], got {tuple(t.shape)}")
    return t.float()


class WorldModelVecEnv:
    """See the module docstring. wm_env: a `WorldModelEnv`; detector: an `IncrementalSuccess` whose
    batch size is num_envs; initial_frames: the pool episodes start from (reset draws from it)."""

    def __init__(self, wm_env: Any, detector: Any, initial_frames, *, num_envs: int, max_chunks: int,
                 action_space: str = "normalized"):
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs <= 0:
            raise ValueError(f"num_envs: expected a positive int, got {num_envs!r}")
        if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks <= 0:
            raise ValueError(f"max_chunks: expected a positive int, got {max_chunks!r}")
        if action_space not in ACTION_SPACES:
            raise ValueError(f"action_space: expected one of {ACTION_SPACES}, got {action_space!r}")
        if getattr(detector, "batch_size", None) != num_envs:
            raise ValueError(f"detector: expected an IncrementalSuccess over num_envs={num_envs} rows, "
                             f"got batch size {getattr(detector, 'batch_size', None)}")
        self.wm_env, self.detector = wm_env, detector
        self.pool = _as_frames(initial_frames)
        if self.pool.shape[0] == 0:
            raise ValueError("initial_frames: expected at least one frame")
        self.num_envs, self.max_chunks, self.action_space = num_envs, max_chunks, action_space
        self.K, self.A = wm_env.K, wm_env.A
        self.device = wm_env.device
        self._scale = self._offset = None
        if action_space == "env":
            stats = wm_env.action_stats
            if not stats:
                raise ValueError("action_space: 'env' needs the world model's action statistics (q01/q99); "
                                 "this world model has none: pass normalized actions")
            q01 = torch.as_tensor(np.asarray(stats["q01"], dtype=np.float32), device=self.device)
            q99 = torch.as_tensor(np.asarray(stats["q99"], dtype=np.float32), device=self.device)
            span = q99 - q01
            const = span <= 1e-8
            self._scale = torch.where(const, torch.zeros_like(span), 2 / span.clamp_min(1e-8))
            self._offset = torch.where(const, torch.zeros_like(span), -2 * q01 / span.clamp_min(1e-8) - 1)
        self.generator = torch.Generator().manual_seed(0)
        self.chunks = torch.zeros(num_envs, dtype=torch.int64)
        self.terminated = torch.zeros(num_envs, dtype=torch.bool)
        self.truncated = torch.zeros(num_envs, dtype=torch.bool)
        self.initial_index = torch.zeros(num_envs, dtype=torch.int64)
        self._obs: Optional[torch.Tensor] = None

    @property
    def single_action_shape(self) -> tuple[int, int]:
        """(K, A): one action chunk."""
        return (self.K, self.A)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Start episodes from frames drawn from the pool (all rows, or options['mask'] [B] bool rows).
        seed seeds the draw and the world model's noise. Returns (obs [B, 3, H, W], info)."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
            if getattr(self.wm_env, "generator", None) is not None:
                self.wm_env.generator.manual_seed(int(seed))
            else:
                self.wm_env.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        mask = (options or {}).get("mask")
        B = self.num_envs
        idx = torch.randint(0, self.pool.shape[0], (B,), generator=self.generator)
        first = self.pool[idx]
        if mask is None or self.wm_env.ctx is None or self._obs is None:
            mask = torch.ones(B, dtype=torch.bool)
            self.wm_env.reset(first)
        else:
            mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
            check_tensor("options['mask']", mask, shape=(B,), dtype=torch.bool)
            self.wm_env.reset_slots(mask.to(self.device), first)
        self.detector.reset_slots(mask.to(self.detector.device), first)
        self.chunks[mask] = 0
        self.terminated[mask] = False
        self.truncated[mask] = False
        self.initial_index[mask] = idx[mask]
        obs = first.to(self.device)
        self._obs = obs if self._obs is None else torch.where(mask.to(self.device).view(B, 1, 1, 1), obs, self._obs)
        return self._obs, {"initial_index": self.initial_index.clone(), "reset": mask}

    def _normalized(self, actions) -> torch.Tensor:
        a = torch.as_tensor(actions, device=self.device)
        check_tensor("actions", a, shape=(self.num_envs, self.K, self.A), floating=True)
        a = a.float()
        if self.action_space == "env":
            a = (a * self._scale + self._offset).clamp_(-1, 1)
        elif not bool(((a >= -1) & (a <= 1)).all()):
            raise ValueError("actions: normalized actions must lie in [-1, 1] (action_space='env' takes simulator units)")
        return a

    def step(self, actions):
        """actions [B, K, A] -> (obs [B, 3, H, W] the last imagined frame, reward [B] float32,
        terminated [B] bool, truncated [B] bool, info with 'frames' [B, K, 3, H, W],
        'success_prob' [B, K], 'first_success_frame' [B], 'chunks' [B])."""
        if self._obs is None:
            raise RuntimeError("step: call reset() first")
        a = self._normalized(actions)
        frames = self.wm_env.step(a)  # [B, K, 3, H, W] in [-1, 1]
        before = self.terminated.clone()
        success, first = self.detector.update(frames)
        success = success.cpu()
        self.chunks += 1
        self.terminated |= success
        reward = (self.terminated & ~before).float()
        self.truncated |= (self.chunks >= self.max_chunks) & ~self.terminated
        self._obs = frames[:, -1]
        info = {"frames": frames, "success_prob": self.detector.last_probs, "first_success_frame": first,
                "chunks": self.chunks.clone()}
        return self._obs, reward, self.terminated.clone(), self.truncated.clone(), info
