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
