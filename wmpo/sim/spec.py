"""What defines a task: the contract between the task modules and the rest of wmpo.sim."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np


class Expert(Protocol):
    """A scripted expert: waypoints computed from object poses read off the simulator."""

    def reset(self, env: Any) -> None:
        """Called after every env reset, with the underlying robosuite env."""
        ...

    def act(self, env: Any) -> np.ndarray:
        """-> float [7] env-space action (OSC delta position, delta rotation, gripper -1 open / +1 closed)."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """short name used on the command line, e.g. 'square'"""
    instruction: str
    """the fixed language instruction of the task"""
    horizon: int
    """maximum episode length in env steps"""
    make_robosuite_env: Callable[..., Any]
    """(**robosuite_kwargs) -> robosuite env with a Panda arm, OSC_POSE control, D0 initial distribution"""
    make_expert: Callable[[], Expert]
    """() -> a fresh scripted expert"""
