"""The in-memory form of one trajectory, shared by the store, the trainers and the pipeline: the
record, its consistency check, and the action quantiles (q01 / q99) that normalize actions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ACTION_DIM = 7
"""D: env action dimensions (OSC delta position, delta rotation, gripper); the one definition"""


@dataclass
class Episode:
    """One trajectory.

    frames[t] is the observation before actions[t]; frames[T] is the one after the last action,
    so len(frames) == len(actions) + 1 == len(states).

    finish_step: the index of the first frame that shows the task solved, which is the number of
    actions executed up to and including the one that solved it (frames[finish_step] is the first
    solved frame, actions[finish_step - 1] the solving action); T when it was never solved.
    `wmpo.sim.collect` ends an episode at its first solved step, so it writes finish_step == T for
    successes and failures alike. The imagination engine's TrajectoryBatch.length and the real
    rollouts' lengths count steps the same way.
    """

    frames: np.ndarray  # uint8 [T+1, H, W, 3] agentview images
    actions: np.ndarray  # float32 [T, 7] env-space actions (delta pos, delta rot, gripper)
    states: np.ndarray  # float64 [T+1, S] flattened simulator states
    rewards: np.ndarray  # float32 [T]
    dones: np.ndarray  # bool [T]
    success: bool
    finish_step: int  # index of the first solved frame = actions executed up to and including the solving one (T if never)
    instruction: str
    task: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


def action_quantiles(actions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension 1% / 99% quantiles of float [N, 7] actions (zeros / ones when empty)."""
    if len(actions) == 0:
        return {"q01": -np.ones(ACTION_DIM, np.float32), "q99": np.ones(ACTION_DIM, np.float32)}
    return {
        "q01": np.quantile(actions, 0.01, axis=0).astype(np.float32),
        "q99": np.quantile(actions, 0.99, axis=0).astype(np.float32),
    }


def check_episode(ep: Episode) -> None:
    """ValueError naming the field unless `ep` has consistent shapes and dtypes."""
    if not isinstance(ep, Episode):
        raise ValueError(f"ep: expected an Episode, got {type(ep).__name__}")
    f = np.asarray(ep.frames)
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"ep.frames: expected uint8 [T+1, H, W, 3], got {f.dtype} {f.shape}")
    T = len(f) - 1
    if T < 1:
        raise ValueError(f"ep.frames: expected at least 2 frames (T+1 with T >= 1), got {f.shape}")
    a = np.asarray(ep.actions)
    if a.shape != (T, ACTION_DIM):
        raise ValueError(f"ep.actions: expected shape ({T}, {ACTION_DIM}) for {T + 1} frames, got {a.shape}")
    s = np.asarray(ep.states)
    if s.ndim != 2 or len(s) != T + 1:
        raise ValueError(f"ep.states: expected shape ({T + 1}, S), got {s.shape}")
    for name in ("rewards", "dones"):
        v = np.asarray(getattr(ep, name))
        if v.shape != (T,):
            raise ValueError(f"ep.{name}: expected shape ({T},), got {v.shape}")
    if not 0 <= int(ep.finish_step) <= T:
        raise ValueError(f"ep.finish_step: expected 0..{T}, got {ep.finish_step}")
