"""What every importer of outside data shares (`wmpo import`): the checks on frames, actions and
per-step arrays (an error names the file, the key, the expected and the received shape), the
success rule, and writing the episodes into a new trajectory store.

Success rule: the file's own success flag when it has one; else the last reward (> 0: success,
robosuite's sparse reward is 1 on success); neither: an error, never a guess. finish_step is the
first step whose flag / reward says solved (+1, the Episode convention), T otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from wmpo.data.episode import ACTION_DIM, Episode
from wmpo.data.integrity import StoreFormatError


class ImportFormatError(StoreFormatError):
    """An input file that cannot be imported: a missing key, a wrong shape, non-image frames."""


def need(group: Any, key: str, src: Path) -> Any:
    """group[key], or ImportFormatError naming the file and the missing key (and what is there)."""
    if key not in group:
        have = sorted(group.keys()) if hasattr(group, "keys") else []
        raise ImportFormatError(f"{src}: missing key {(group.name.rstrip('/') + '/' + key).lstrip('/')!r} "
                                f"(present: {have[:12]}{' ...' if len(have) > 12 else ''})")
    return group[key]


def is_image(ds: Any) -> bool:
    return len(ds.shape) == 4 and ds.shape[-1] == 3 and np.dtype(ds.dtype) == np.uint8


def check_frames(ds: Any, where: str, src: Path) -> None:
    """ImportFormatError unless `ds` holds uint8 RGB images [N, H, W, 3]."""
    shape, dtype = tuple(ds.shape), np.dtype(ds.dtype)
    if len(shape) != 4 or shape[-1] != 3:
        raise ImportFormatError(f"{src}: {where}: non-image frames: expected RGB images [N, H, W, 3], got shape {shape} "
                                f"({dtype}); name the image observation with --image-key")
    if dtype != np.uint8:
        raise ImportFormatError(f"{src}: {where}: non-image frames: expected uint8 pixels (0..255), got {dtype} "
                                f"{shape}; convert the images to uint8 first")


def check_steps(a: np.ndarray | None, T: int, where: str, src: Path, width: int | None = None) -> np.ndarray | None:
    """A per-step array of length T ([T] or [T, width]), checked; None passes through."""
    if a is None:
        return None
    a = np.asarray(a)
    want = (T,) if width is None else (T, width)
    if width is None and a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.shape != want:
        raise ImportFormatError(f"{src}: {where}: wrong shape: expected {want}, got {a.shape}")
    return a


def check_actions(a: np.ndarray, T: int, where: str, src: Path) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != ACTION_DIM:
        raise ImportFormatError(f"{src}: {where}: wrong shape: expected [T, {ACTION_DIM}] actions (delta position, delta "
                                f"rotation, gripper), got {a.shape}")
    a = check_steps(a, T, where, src, ACTION_DIM)
    if not np.isfinite(a).all():
        raise ImportFormatError(f"{src}: {where}: {int((~np.isfinite(a)).sum())} non-finite action value(s)")
    return a.astype(np.float32)


def outcome(flags: np.ndarray | bool | None, rewards: np.ndarray | None, T: int, where: str, src: Path) -> tuple[bool, int, str]:
    """(success, finish_step, what it came from): per-step or episode success flags first, else the
    last reward; neither -> ImportFormatError."""
    if flags is not None:
        f = np.asarray(flags).astype(bool).reshape(-1)
        if f.size == T:  # per-step flags: solved after step t
            success, steps = bool(f.any()), np.flatnonzero(f)
        elif f.size == 1:  # one flag for the episode: the first positive reward says when, if any
            success = bool(f[0])
            steps = np.flatnonzero(np.asarray(rewards) > 0) if rewards is not None else np.zeros(0, int)
        else:
            raise ImportFormatError(f"{src}: {where}: success flags: wrong shape: expected one flag or {T}, got {f.size}")
        return success, int(steps[0]) + 1 if success and len(steps) else T, "success flag"
    if rewards is not None and len(rewards):
        success = bool(rewards[-1] > 0)
        first = np.flatnonzero(np.asarray(rewards) > 0)
        return success, int(first[0]) + 1 if success else T, "last reward"
    raise ImportFormatError(f"{src}: {where}: no success flag and no rewards: cannot tell whether the episode succeeded")


def make_episode(frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray | None, dones: np.ndarray | None,
                 states: np.ndarray | None, success: bool, finish_step: int, instruction: str, task: str,
                 meta: dict) -> Episode:
    """An Episode from checked arrays. Missing per-step arrays are recorded as missing in meta
    (rewards / dones: zeros; states: [T+1, 0], or a NaN last row when the file has T of them)."""
    T = len(actions)
    missing = [k for k, v in (("rewards", rewards), ("dones", dones), ("states", states)) if v is None]
    if missing:
        meta = {**meta, "missing_in_source": missing}
    if states is None:
        states = np.zeros((T + 1, 0))
    elif len(states) == T:
        states = np.concatenate([states, np.full((1, states.shape[1]), np.nan)])  # the state after the last action: unknown
        meta = {**meta, "last_state": "not in source (NaN)"}
    return Episode(frames=np.ascontiguousarray(frames, np.uint8), actions=actions,
                   states=np.asarray(states, np.float64).reshape(T + 1, -1),
                   rewards=np.zeros(T, np.float32) if rewards is None else np.asarray(rewards, np.float32),
                   dones=np.zeros(T, bool) if dones is None else np.asarray(dones).astype(bool),
                   success=success, finish_step=finish_step, instruction=instruction, task=task, meta=meta)


def write_store(episodes: Iterable[Episode], out: str | os.PathLike, env_meta: dict, only_successes: bool = False) -> dict:
    """Write `episodes` into a new store at `out` (refused if it exists) -> counts."""
    from wmpo.data.store import TrajectoryStore

    out = Path(out)
    if out.exists() or out.with_name(out.name + ".episodes").exists():
        raise ValueError(f"out: {out} exists; import into a new store path")
    n = succ = steps = skipped = 0
    try:
        with TrajectoryStore(out, "w", env_meta=env_meta) as store:
            for ep in episodes:
                if only_successes and not ep.success:
                    skipped += 1
                    continue
                store.append(ep)
                n, succ, steps = n + 1, succ + int(ep.success), steps + len(ep)
            if n == 0:
                raise ImportFormatError(f"out: no episode to write to {out} ({skipped} failed episode(s) left out by "
                                        f"--only-successes)")
    except BaseException:
        # a failed import leaves nothing half-written behind
        import shutil

        out.unlink(missing_ok=True)
        shutil.rmtree(out.with_name(out.name + ".episodes"), ignore_errors=True)
        raise
    return {"episodes": n, "successes": succ, "steps": steps, "skipped_failures": skipped, "store": str(out)}


def open_hdf5(src: Path):
    """The HDF5 file at `src`, opened read-only (ImportFormatError when it is not one)."""
    import h5py

    try:
        return h5py.File(src, "r")
    except OSError as e:
        raise ImportFormatError(f"{src}: not an HDF5 file, or a damaged one ({e})") from None
