"""Run a policy in N real simulator workers and write finished episodes to a TrajectoryStore.

A policy is either "expert" (each worker runs the task's scripted expert, one action per step) or
a callable `(frames uint8 [n, H, W, 3], instructions list[str]) -> float [n, K, 7]` env actions:
an action chunk executed open loop for K steps, after which that env's policy is queried again.
Envs that need a new chunk at the same step are queried together in one batch.

An episode ends at the first step where the task is solved (its last frame shows the solved
state; finish_step == T) or at the task horizon (success False, finish_step == T).

Each episode's meta records its start: `seed` (a D0 seed) or `start_index` + `start_state_sha256`
(a stored simulator state at that position of the caller's list). `collect` reads them back from
the store and skips starts that are already there, so re-running a killed collection resumes it
without storing any start twice.
"""
from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np

from wmpo.data.episode import Episode

Policy = Union[str, Callable[[np.ndarray, list], np.ndarray]]


@dataclass
class Start:
    """How an episode starts: from a D0 seed or from a stored simulator state."""

    seed: int | None = None
    state: np.ndarray | None = None
    index: int = 0
    """position of this start in the caller's list"""


def state_digest(state: np.ndarray) -> str:
    """Short sha256 of a simulator state (float64 bytes): identifies a state start across runs."""
    return hashlib.sha256(np.ascontiguousarray(state, np.float64).tobytes()).hexdigest()[:16]


def start_key(start: Start) -> tuple:
    """What makes two starts the same start: the D0 seed, or the position and the state."""
    if start.state is not None:
        return ("state", int(start.index), state_digest(start.state))
    return ("seed", int(start.seed))


def stored_start_keys(store) -> set[tuple]:
    """start_key of every episode in `store` (a TrajectoryStore), from the episodes' meta."""
    keys = set()
    for m in store.episode_metas():
        if m.get("start_state_sha256") is not None:
            keys.add(("state", int(m.get("start_index", -1)), str(m["start_state_sha256"])))
        elif m.get("seed") is not None:
            keys.add(("seed", int(m["seed"])))
    return keys


def describe_starts(starts: Sequence[Start]) -> str:
    """'seeds 0-4, 7' / 'start indices 0-2' for messages."""
    def ranges(xs: list[int]) -> str:
        xs, out, i = sorted(xs), [], 0
        while i < len(xs):
            j = i
            while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
                j += 1
            out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
            i = j + 1
        return ", ".join(out[:8]) + (", ..." if len(out) > 8 else "")

    seeds = [s.seed for s in starts if s.state is None]
    idx = [s.index for s in starts if s.state is not None]
    parts = ([f"seeds {ranges(seeds)}"] if seeds else []) + ([f"start indices {ranges(idx)}"] if idx else [])
    return "; ".join(parts) or "none"


def _check_chunk(chunk, n: int) -> np.ndarray:
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim == 2:
        chunk = chunk[:, None, :]
    if chunk.ndim != 3 or chunk.shape[0] != n or chunk.shape[2] != 7 or chunk.shape[1] < 1:
        raise ValueError(f"policy output: expected env actions [{n}, K, 7], got shape {chunk.shape}")
    if not np.all(np.isfinite(chunk)):
        raise ValueError("policy output: contains NaN or inf")
    return chunk


def run_episodes(venv, policy: Policy, starts: Sequence[Start], task: str,
                 max_steps: int | None = None) -> Iterator[tuple[Start, Episode]]:
    """Yield (start, Episode) as episodes finish (not in start order), keeping every worker busy.
    With a VecEnv built with `expert_noise`, an expert episode's meta records what its perturbation
    drew and did (`meta["expert_noise"]`)."""
    expert = isinstance(policy, str)
    if expert and policy != "expert":
        raise ValueError(f"policy: expected 'expert' or a callable, got {policy!r}")
    n = venv.num_envs
    horizon = int(max_steps or venv.horizon)
    pending = deque(starts)
    slot_start: list[Start | None] = [None] * n
    buf: list[dict | None] = [None] * n
    queues: list[deque] = [deque() for _ in range(n)]
    frames_now: list[np.ndarray | None] = [None] * n

    def launch(slots: list[int]) -> None:
        by_kind: dict[str, list[int]] = {"seed": [], "state": []}
        for i in slots:
            st = pending.popleft()
            slot_start[i] = st
            by_kind["state" if st.state is not None else "seed"].append(i)
        for kind, idx in by_kind.items():
            if not idx:
                continue
            mask = np.zeros(n, bool)
            mask[idx] = True
            if kind == "seed":
                seeds = [slot_start[i].seed if mask[i] else None for i in range(n)]
                frames = venv.reset(seeds, mask=mask)
            else:
                states = np.zeros((n, venv.state_dim))
                for i in idx:
                    states[i] = slot_start[i].state
                frames = venv.reset_to(states, mask=mask)
            for i in idx:
                f = None if frames is None else frames[i]
                frames_now[i] = f
                buf[i] = {"frames": [f], "states": [venv.last_states[i].copy()], "actions": [], "rewards": [], "dones": []}
                queues[i].clear()

    launch([i for i in range(min(n, len(pending)))])
    while any(s is not None for s in slot_start):
        active = np.array([s is not None for s in slot_start])
        if expert:
            frames, rewards, dones, successes, actions = venv.step_expert(mask=active)
        else:
            need = [i for i in range(n) if active[i] and not queues[i]]
            if need:
                batch = np.stack([frames_now[i] for i in need])
                chunk = _check_chunk(policy(batch, [venv.instruction] * len(need)), len(need))
                for j, i in enumerate(need):
                    queues[i].extend(chunk[j])
            actions = np.zeros((n, 7))
            for i in np.flatnonzero(active):
                actions[i] = queues[i].popleft()
            frames, rewards, dones, successes = venv.step(actions, mask=active)
        finished = []
        for i in np.flatnonzero(active):
            b = buf[i]
            frames_now[i] = None if frames is None else frames[i]
            b["frames"].append(frames_now[i])
            b["states"].append(venv.last_states[i].copy())
            b["actions"].append(actions[i].astype(np.float32))
            b["rewards"].append(float(rewards[i]))
            T = len(b["actions"])
            done = bool(successes[i]) or T >= horizon
            b["dones"].append(done)
            if done:
                meta = {"seed": slot_start[i].seed, "start_index": slot_start[i].index}
                if slot_start[i].state is not None:
                    meta["start_state_sha256"] = state_digest(slot_start[i].state)
                if expert and getattr(venv, "expert_noise", None) is not None:
                    meta["expert_noise"] = venv.expert_noise_summaries(mask=np.arange(n) == i)[i]
                ep = Episode(
                    frames=np.stack(b["frames"]) if frames is not None else np.zeros((T + 1, 0, 0, 3), np.uint8),
                    actions=np.stack(b["actions"]),
                    states=np.stack(b["states"]),
                    rewards=np.asarray(b["rewards"], np.float32),
                    dones=np.asarray(b["dones"], bool),
                    success=bool(successes[i]),
                    finish_step=T,
                    instruction=venv.instruction,
                    task=task,
                    meta=meta,
                )
                yield slot_start[i], ep
                slot_start[i], buf[i] = None, None
                finished.append(i)
        refill = finished[: len(pending)]
        if refill:
            launch(refill)


@dataclass
class CollectResult:
    episodes: int
    successes: int
    env_steps: int
    seconds: float
    skipped: int = 0
    """starts not run because the store already held them (resume)"""

    @property
    def success_rate(self) -> float:
        return self.successes / max(1, self.episodes)

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / max(1e-9, self.seconds)


def make_starts(init_states: np.ndarray | None = None, n_episodes: int | None = None, seed: int = 0,
                seeds: Sequence[int] | None = None) -> list[Start]:
    """Episode starts from explicit states [n, S], from explicit D0 `seeds`, or from `n_episodes`
    D0 seeds seed, seed+1, ..."""
    if seeds is not None:
        if init_states is not None:
            raise ValueError("seeds: give either init_states or seeds, not both")
        seeds = [int(s) for s in seeds]
        if not seeds or min(seeds) < 0:
            raise ValueError(f"seeds: expected a non-empty list of non-negative ints, got {seeds[:5]}...")
        return [Start(seed=s, index=i) for i, s in enumerate(seeds)]
    if init_states is not None:
        init_states = np.asarray(init_states, np.float64)
        if init_states.ndim != 2:
            raise ValueError(f"init_states: expected [n, S], got shape {init_states.shape}")
        return [Start(state=s, index=i) for i, s in enumerate(init_states)]
    if n_episodes is None or n_episodes < 1:
        raise ValueError(f"n_episodes: expected >= 1 when init_states is None, got {n_episodes}")
    return [Start(seed=seed + i, index=i) for i in range(n_episodes)]


def env_meta(task: str, image_size: int) -> dict:
    """Environment metadata stored with the episodes (robomimic's `env_args`).

    robomimic reads `env_name`, `type` and `env_kwargs`. These say what the env is: a wmpo task
    built by `wmpo.sim.make_env(**env_kwargs)` (robosuite underneath, rendered by wmpo's own
    agentview renderer), so `type` is "wmpo", not one of robomimic's EnvType numbers (1 robosuite,
    2 gym, 3 iGibson): robomimic's env builder refuses it instead of building another env."""
    import mujoco
    import robosuite

    from wmpo.sim.tasks import get_task

    spec = get_task(task)
    return {
        "env_name": task, "type": "wmpo", "make_env": "wmpo.sim.make_env",
        "env_kwargs": {"task": task, "image_size": image_size, "camera": "agentview"},
        "about": (f"wmpo.sim task {task!r}: robosuite {robosuite.__version__} / MuJoCo {mujoco.__version__}, Panda, "
                  f"OSC_POSE at 20 Hz, agentview frames {image_size}x{image_size} from wmpo.sim.render; not buildable "
                  f"by robomimic's EnvUtils (type 'wmpo')"),
        "instruction": spec.instruction, "horizon": spec.horizon, "image_size": image_size, "camera": "agentview",
        "robots": "Panda", "controller": "OSC_POSE", "control_freq": 20,
        "robosuite_version": robosuite.__version__, "mujoco_version": mujoco.__version__,
    }


def collect(policy: Policy, task: str, store, *, init_states: np.ndarray | None = None,
            n_episodes: int | None = None, seed: int = 0, num_workers: int = 1, image_size: int = 64,
            only_successes: bool = False, max_steps: int | None = None, show_progress: bool = True,
            seeds: Sequence[int] | None = None, expert_noise=None, resume: bool = True) -> CollectResult:
    """Run `policy` on the given starts and append the episodes to `store` (a TrajectoryStore or a
    path, opened in "a" mode). With `only_successes`, failed episodes are not written. `seeds`
    gives explicit D0 seeds; `expert_noise` (an ExpertNoise) perturbs the scripted expert.

    With `resume` (default), starts already in the store (same D0 seed, or same position and
    initial state; see `start_key`) are skipped and reported, so a re-run of a killed collection
    finishes it without duplicates. `resume=False` runs every start again (e.g. another policy
    from the same starts)."""
    from wmpo.data.store import TrajectoryStore
    from wmpo.sim.vec_env import VecEnv
    from wmpo.utils.logging import progress

    if image_size < 8:
        raise ValueError(f"image_size: expected >= 8 (stored episodes need frames), got {image_size}")
    if num_workers < 1:
        raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps: expected >= 1 (or None for the task horizon), got {max_steps}")
    starts = make_starts(init_states, n_episodes, seed, seeds=seeds)
    if expert_noise is not None and policy != "expert":
        raise ValueError("expert_noise: only the scripted expert (policy='expert') can be perturbed")
    own = not isinstance(store, TrajectoryStore)
    if own:
        store = TrajectoryStore(store, "a")
    elif store.mode == "r":
        raise ValueError(f"store: {store.path} is open read-only (mode 'r'); open it with mode 'a' to collect into it")
    t0, steps, succ, count = time.time(), 0, 0, 0
    try:
        meta = env_meta(task, image_size)
        old = store.env_meta
        if len(store) > 0 and old:
            for k in ("env_name", "image_size"):
                if k in old and old[k] != meta[k]:
                    raise ValueError(f"store: {store.path} holds episodes with {k}={old[k]!r}; collecting {k}={meta[k]!r} "
                                     f"into it would mix them (use another store)")
        store.set_env_meta(meta)
        skipped: list[Start] = []
        if resume:
            have = stored_start_keys(store)
            skipped = [st for st in starts if start_key(st) in have]
            starts = [st for st in starts if start_key(st) not in have]
            if skipped and show_progress:
                print(f"collect {task}: {len(skipped)} start(s) already in {store.path}, skipped "
                      f"({describe_starts(skipped)}); {len(starts)} to run", flush=True)
        if not starts:
            return CollectResult(episodes=0, successes=0, env_steps=0, seconds=time.time() - t0, skipped=len(skipped))
        venv = VecEnv(task, num_envs=min(num_workers, len(starts)), image_size=image_size, seed=seed,
                      expert_noise=expert_noise)
        try:
            it = run_episodes(venv, policy, starts, task, max_steps=max_steps)
            for _, ep in progress(it, total=len(starts), desc=f"collect {task}", disable=None if show_progress else True):
                count += 1
                steps += len(ep)
                succ += int(ep.success)
                if ep.success or not only_successes:
                    store.append(ep)
        finally:
            venv.close()
    finally:
        if own:
            store.close()
    return CollectResult(episodes=count, successes=succ, env_steps=steps, seconds=time.time() - t0,
                         skipped=len(skipped))
