"""What defines a task: the contract between the task modules and the rest of wmpo.sim."""
from __future__ import annotations

from dataclasses import dataclass, replace
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
class Disruption:
    """A named variant of a task that shifts one thing the policy sees (the paper's Table 2 / Fig. 4):
    same robot, objects, initial-state distribution, state layout, success check and expert."""

    name: str
    """short name used on the command line, e.g. 'position'"""
    description: str
    """what changes, in one line"""
    make_robosuite_env: Callable[..., Any]
    """(**robosuite_kwargs) -> the disrupted robosuite env (same kwargs as the task's own)"""


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
    disruptions: tuple[Disruption, ...] = ()
    """the task's disruption variants (select one with `with_disruption`)"""
    disruption: str | None = None
    """the disruption this spec builds (None: the nominal task)"""

    @property
    def disruption_names(self) -> list[str]:
        return [d.name for d in self.disruptions]

    def with_disruption(self, name: str | None) -> "TaskSpec":
        """This task with disruption `name` applied (None: the nominal task); a clear error names the
        task's valid disruptions."""
        if self.disruption is not None:
            raise ValueError(f"disruption: task {self.name!r} already has disruption {self.disruption!r}; "
                             f"start from the nominal task (get_task({self.name!r}))")
        if name is None:
            return self
        for d in self.disruptions:
            if d.name == name:
                return replace(self, make_robosuite_env=d.make_robosuite_env, disruption=d.name)
        valid = ", ".join(repr(n) for n in self.disruption_names) or "none"
        raise ValueError(f"disruption: task {self.name!r} has disruptions {valid}, got {name!r}")
