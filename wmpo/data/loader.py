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


def check_action_stats(name: str, stats: Any, action_dim: int | None = None) -> dict[str, np.ndarray]:
    """Validate q01/q99 action statistics -> {"q01": float32 [A], "q99": float32 [A]} (a copy).

    Raises ValueError naming `name` when a key is missing, the shapes differ, or values are not finite.
    """
    if not isinstance(stats, dict) or "q01" not in stats or "q99" not in stats:
        got = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        raise ValueError(f"{name}: expected a dict with 'q01' and 'q99' (per action dimension), got {got}")
    q01 = np.asarray(stats["q01"], dtype=np.float32).reshape(-1)
    q99 = np.asarray(stats["q99"], dtype=np.float32).reshape(-1)
    if q01.shape != q99.shape:
        raise ValueError(f"{name}: expected q01 and q99 of one shape, got {q01.shape} and {q99.shape}")
    if action_dim is not None and q01.shape[0] != action_dim:
        raise ValueError(f"{name}: expected statistics for {action_dim} action dimensions, got {q01.shape[0]}")
    if not (np.isfinite(q01).all() and np.isfinite(q99).all()):
        raise ValueError(f"{name}: expected finite q01/q99, got q01={q01.tolist()} q99={q99.tolist()}")
    return {"q01": q01, "q99": q99}


def same_action_stats(a: dict, b: dict) -> bool:
    """True when two q01/q99 statistics are equal (as float32, the precision they are stored in)."""
    a, b = check_action_stats("a", a), check_action_stats("b", b)
    return a["q01"].shape == b["q01"].shape and bool(np.array_equal(a["q01"], b["q01"]) and np.array_equal(a["q99"], b["q99"]))
