"""Per-task initial-state sets: 'train' and 'eval' drawn from disjoint seed ranges.

State i of a split is the simulator state right after `TaskEnv.reset(seed=SEED_BASE[split] + i)`,
so sets are deterministic and a prefix of a larger set. They are cached as .npy files under
`cache_dir` (default $WMPO_CACHE_DIR or ~/.cache/wmpo) / initial_states.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SEED_BASE = {"train": 1_000_000, "eval": 2_000_000}
"""first reset seed of each split; splits hold fewer than 1e6 states, so they never overlap"""
FRESH_SEED_RANGE = (10_000_000, 2**31 - 1)
"""`fresh_initial_states` draws its reset seeds from here: above every fixed split and the corpus (3e6)"""
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("WMPO_CACHE_DIR", Path.home() / ".cache" / "wmpo"))


def initial_state_seeds(split: str, n: int) -> np.ndarray:
    if split not in SEED_BASE:
        raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")
    if not 0 < n < 1_000_000:
        raise ValueError(f"n: expected 1..999999, got {n}")
    return SEED_BASE[split] + np.arange(n)


def states_from_seeds(task: str, seeds) -> np.ndarray:
    """The simulator state after `reset(seed)` for each seed: float64 [len(seeds), S]."""
    from wmpo.sim.env import make_env

    env = make_env(task, image_size=0)
    try:
        states = []
        for s in seeds:
            env.reset(int(s))
            states.append(env.get_state())
    finally:
        env.close()
    return np.stack(states)


def make_initial_states(task: str, split: str, n: int = 128) -> np.ndarray:
    """Compute the states (no cache): float64 [n, S]."""
    return states_from_seeds(task, initial_state_seeds(split, n))


def get_initial_states(task: str, split: str = "train", n: int = 128, cache_dir: str | os.PathLike | None = None,
                       use_cache: bool = True) -> np.ndarray:
    """float64 [n, S] initial simulator states of `task` for `split` ("train" | "eval")."""
    initial_state_seeds(split, n)  # validates split and n
    from wmpo.sim.tasks import get_task

    get_task(task)  # validates the task name
    if not use_cache:
        return make_initial_states(task, split, n)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "initial_states" / f"{task}_{split}_{n}_v{CACHE_VERSION}.npy"
    if path.exists():
        try:
            states = np.load(path)
            if states.shape[0] == n and states.dtype == np.float64:
                return states
        except (OSError, ValueError):
            pass  # unreadable cache: recompute
    states = make_initial_states(task, split, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, states)
    os.replace(tmp, path)
    return states


def fresh_initial_states(task: str, states_seed: int, n: int, check_against: int = 128) -> np.ndarray:
    """float64 [n, S]: a fresh set of initial states nobody tuned on, from n distinct reset seeds drawn
    with `states_seed` in FRESH_SEED_RANGE (disjoint from the train / eval / corpus seed ranges), and
    checked against the first `check_against` training states: a state equal to one of them raises."""
    if not 0 < n < 1_000_000:
        raise ValueError(f"n: expected 1..999999, got {n}")
    if states_seed < 0:
        raise ValueError(f"states_seed: expected >= 0, got {states_seed}")
    states = states_from_seeds(task, _distinct_seeds(int(states_seed), n))
    if check_against > 0:
        train = get_initial_states(task, "train", check_against)
        # state[0] is the simulator time; compare the rest (qpos, qvel)
        same = (np.abs(states[:, None, 1:] - train[None, :, 1:]).max(-1) < 1e-9).any(1)
        if same.any():
            raise RuntimeError(f"fresh_initial_states: {int(same.sum())} state(s) drawn with seed {states_seed} equal a training "
                               "state; the seed ranges should make this impossible")
    return states


def _distinct_seeds(states_seed: int, n: int) -> np.ndarray:
    """n distinct reset seeds in FRESH_SEED_RANGE, reproducible from `states_seed`."""
    rng = np.random.default_rng([int(states_seed), 0xF4E5])
    lo, hi = FRESH_SEED_RANGE
    seeds: list[int] = []
    seen: set[int] = set()
    while len(seeds) < n:
        for s in rng.integers(lo, hi, size=n).tolist():
            if s not in seen and len(seeds) < n:
                seen.add(s)
                seeds.append(s)
    return np.asarray(seeds, dtype=np.int64)
