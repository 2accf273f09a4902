"""The in-memory form of one trajectory, shared by the store, the trainers and the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Episode:
    """One trajectory.

    frames[t] is the observation before actions[t]; frames[T] is the one after the last action,
    so len(frames) == len(actions) + 1 == len(states).
    """

    frames: np.ndarray  # uint8 [T+1, H, W, 3] agentview images
    actions: np.ndarray  # float32 [T, 7] env-space actions (delta pos, delta rot, gripper)
    states: np.ndarray  # float64 [T+1, S] flattened simulator states
    rewards: np.ndarray  # float32 [T]
    dones: np.ndarray  # bool [T]
    success: bool
    finish_step: int  # first step index at which the task was solved (T if never)
    instruction: str
    task: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)
