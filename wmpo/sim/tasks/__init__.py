"""Task registry: name -> TaskSpec. Each task module exposes `SPEC: TaskSpec`.

`square` is imported eagerly; the other task modules are imported on first use, so a missing or
broken module there only affects that task (a clear error when it is asked for, and it is absent
from TASKS), never `import wmpo.sim`.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Iterator

from wmpo.sim.spec import TaskSpec

TASK_MODULES: dict[str, str] = {
    "square": "wmpo.sim.tasks.square",
    "stack_three": "wmpo.sim.tasks.stack_three",
    "three_piece_assembly": "wmpo.sim.tasks.three_piece_assembly",
    "coffee": "wmpo.sim.tasks.coffee",
}
"""task name -> module defining SPEC"""

DISRUPTIONS: dict[str, str] = {
    "position": "square",
    "background": "stack_three",
    "texture": "three_piece_assembly",
}
"""disruption name -> the task it is defined for: the paper's Table 2 / Fig. 4 scenarios (spatial: the
square peg anywhere in a rectangle; background: stack_three on a plain gray table; texture:
three_piece_assembly with a dark wooden base). Each task's SPEC.disruptions holds the variants."""

_loaded: dict[str, TaskSpec] = {}
_errors: dict[str, str] = {}


def _load(name: str) -> TaskSpec | None:
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        spec = importlib.import_module(TASK_MODULES[name]).SPEC
        if not isinstance(spec, TaskSpec) or spec.name != name:
            raise TypeError(f"{TASK_MODULES[name]}.SPEC must be a TaskSpec named {name!r}, got {spec!r}")
    except Exception as e:  # a broken task module must not break the other tasks
        _errors[name] = f"{type(e).__name__}: {e}"
        return None
    _loaded[name] = spec
    return spec


def get_task(name: str, disruption: str | None = None) -> TaskSpec:
    """The TaskSpec for `name` (with `disruption` applied, see DISRUPTIONS), with a clear error for an
    unknown or unloadable task or a disruption the task does not have."""
    if name not in TASK_MODULES:
        raise ValueError(f"task: expected one of {sorted(TASK_MODULES)}, got {name!r}")
    spec = _load(name)
    if spec is None:
        raise ImportError(f"task {name!r} could not be loaded from {TASK_MODULES[name]}: {_errors[name]}")
    if disruption is not None and disruption not in spec.disruption_names:
        valid = ", ".join(repr(n) for n in spec.disruption_names) or "none"
        owner = DISRUPTIONS.get(disruption)
        hint = f" ({disruption!r} is a disruption of task {owner!r})" if owner else ""
        raise ValueError(f"disruption: task {name!r} has disruptions {valid}, got {disruption!r}{hint}")
    return spec.with_disruption(disruption)


class _Registry(Mapping):
    """Read-only mapping of the task specs that load; modules are imported lazily."""

    def __getitem__(self, name: str) -> TaskSpec:
        if name not in TASK_MODULES:
            raise KeyError(name)
        spec = _load(name)
        if spec is None:
            raise KeyError(f"{name} (failed to load: {_errors[name]})")
        return spec

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in TASK_MODULES if _load(n) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        return name in TASK_MODULES and _load(name) is not None  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"TASKS({list(self)})"


TASKS: Mapping[str, TaskSpec] = _Registry()
"""name -> TaskSpec of every task whose module loads"""

_load("square")
