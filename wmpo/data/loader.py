"""The one way episodes leave the stores: `load_episodes` and the action statistics that go with them.

Action statistics are q01/q99 per action dimension over every action (the tokenizer's and the world
model's normalization ranges). One merge rule: a single store gives its own statistics (computed over
all it holds, `TrajectoryStore.action_stats`); several stores give the statistics recomputed over all
their episodes (`action_stats`), never a combination of per-store quantiles.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from wmpo.data.episode import Episode, action_quantiles


def action_stats(episodes: Sequence[Any]) -> dict[str, np.ndarray]:
    """{"q01", "q99"} float32 [D] per action dimension over all actions of `episodes` (anything with
    an `.actions` array [T, D]): the episode record's action_quantiles (as TrajectoryStore.action_stats),
    computed in float64."""
    if not episodes:
        raise ValueError("episodes: expected at least one episode to compute action statistics, got none")
    return action_quantiles(np.concatenate([np.asarray(e.actions, dtype=np.float64).reshape(-1, np.asarray(e.actions).shape[-1])
                                            for e in episodes]))


def load_episodes(store_paths: str | os.PathLike | Sequence[str | os.PathLike],
                  limit: int | None = None) -> tuple[list[Episode], dict[str, np.ndarray]]:
    """Every episode (at most `limit` per store) of one or more trajectory stores, and their action
    statistics (see the module docstring for the merge rule)."""
    from wmpo.data.store import TrajectoryStore

    paths = [store_paths] if isinstance(store_paths, (str, os.PathLike)) else list(store_paths)
    if not paths:
        raise ValueError("store_paths: expected at least one trajectory store path, got none")
    episodes: list[Episode] = []
    stats = None
    for p in paths:
        with TrajectoryStore(p) as store:
            n = len(store) if limit is None else min(len(store), limit)
            episodes += [store.load(i) for i in range(n)]
            if len(paths) == 1:
                stats = store.action_stats()
    if not episodes:
        raise ValueError(f"store_paths: the stores {paths} hold no episodes")
    return episodes, stats if stats is not None else action_stats(episodes)
