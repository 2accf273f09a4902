"""Evaluation spread over the ranks of a process group: each rank runs its own simulator workers on
a contiguous share of the initial states, and the per-episode outcomes (small records, not frames)
are gathered so that every rank returns the same EvalResult as one process evaluating them all."""
from __future__ import annotations

from typing import Any

import numpy as np

from wmpo.dist import DistContext, shard_range
from wmpo.sim.evaluate import EvalResult, evaluate, summarize


def evaluate_across_ranks(policy: Any, task: str, dist: DistContext, *, split: str = "eval", n: int = 128,
                          init_states: np.ndarray | None = None, **kwargs: Any) -> EvalResult:
    """`wmpo.sim.evaluate.evaluate` with the initial states shared out over `dist`'s ranks (a collective:
    every rank calls it). Episodes keep their index in the whole set; videos are written by the rank
    that ran the episode. kwargs: evaluate's other options (num_workers is per rank)."""
    if not dist.enabled:
        return evaluate(policy, task, split=split, n=n, init_states=init_states, **kwargs)
    from wmpo.sim.initial_states import get_initial_states

    if init_states is None:
        init_states = get_initial_states(task, split, n)
    lo, hi = shard_range(len(init_states), dist.rank, dist.world_size)
    part = evaluate(policy, task, split=split, init_states=init_states[lo:hi], first_index=lo, **kwargs) if hi > lo else None
    parts = [p for p in dist.all_gather_object(part) if p is not None]
    return summarize(task, split, [e for p in parts for e in p.episodes], [v for p in parts for v in p.videos],
                     max((p.seconds for p in parts), default=0.0), kwargs.get("disruption"))
