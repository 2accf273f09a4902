"""Crash-safe, appendable HDF5 trajectory store in robomimic layout.

On disk, a store `demos.h5` is
  demos.h5            the index: a robomimic file whose `data/demo_<i>` are HDF5 external links,
                      `data.attrs["env_args"]` (JSON env metadata), `data.attrs["total"]`,
                      `action_stats/q01`, `action_stats/q99` (float32 [7]) and a format marker;
  demos.h5.episodes/  one complete HDF5 file per episode, `demo_<i>.h5`, holding `data/demo_<i>`:
      obs/agentview_image  uint8   [T+1, H, W, 3]   (frames[t] is seen before actions[t];
                                                     frames[T] follows the last action: one more
                                                     frame than robomimic's usual T)
      actions              float32 [T, 7]
      rewards              float32 [T]
      dones                uint8   [T]
      states               float64 [T+1, S]          flattened MjSimState [time, qpos, qvel]
      attrs: num_samples (T), success, finish_step, instruction, task, meta (JSON)

Crash safety: an episode file is written under a temporary name, fsynced and renamed into place
(atomic), then the index is rewritten the same way. A writer killed at any point leaves either the
old index or the new one, and every episode file the index names is complete; the next open in
"a" mode deletes stray temporary files and re-indexes complete episode files the index missed.
Readers see a consistent snapshot and pick up new episodes on the next `len()` / `refresh()`.
Through the external links, h5py/robomimic tools read `demos.h5` like a single file (keep the
`.episodes` folder next to it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from wmpo.data.episode import Episode

FORMAT = "wmpo-trajectory-store"
VERSION = 1
ACTION_DIM = 7
_DEMO_RE = re.compile(r"^demo_(\d+)\.h5$")


class StoreFormatError(ValueError):
    """The file is not a wmpo trajectory store, or an episode in it is malformed."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def action_quantiles(actions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension 1% / 99% quantiles of float [N, 7] actions (zeros / ones when empty)."""
    if len(actions) == 0:
        return {"q01": -np.ones(ACTION_DIM, np.float32), "q99": np.ones(ACTION_DIM, np.float32)}
    return {
        "q01": np.quantile(actions, 0.01, axis=0).astype(np.float32),
        "q99": np.quantile(actions, 0.99, axis=0).astype(np.float32),
    }


def check_episode(ep: Episode) -> None:
    """ValueError naming the field unless `ep` has consistent shapes and dtypes."""
    if not isinstance(ep, Episode):
        raise ValueError(f"ep: expected an Episode, got {type(ep).__name__}")
    f = np.asarray(ep.frames)
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"ep.frames: expected uint8 [T+1, H, W, 3], got {f.dtype} {f.shape}")
    T = len(f) - 1
    if T < 1:
        raise ValueError(f"ep.frames: expected at least 2 frames (T+1 with T >= 1), got {f.shape}")
    a = np.asarray(ep.actions)
    if a.shape != (T, ACTION_DIM):
        raise ValueError(f"ep.actions: expected shape ({T}, {ACTION_DIM}) for {T + 1} frames, got {a.shape}")
    s = np.asarray(ep.states)
    if s.ndim != 2 or len(s) != T + 1:
        raise ValueError(f"ep.states: expected shape ({T + 1}, S), got {s.shape}")
    for name in ("rewards", "dones"):
        v = np.asarray(getattr(ep, name))
        if v.shape != (T,):
            raise ValueError(f"ep.{name}: expected shape ({T},), got {v.shape}")
    if not 0 <= int(ep.finish_step) <= T:
        raise ValueError(f"ep.finish_step: expected 0..{T}, got {ep.finish_step}")


class TrajectoryStore:
    """Append episodes, read them back by index, action statistics for normalization.

    mode "r": read only (the store must exist); "a": append, creating it if missing; "w": create,
    deleting an existing store at `path`.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", env_meta: dict[str, Any] | None = None):
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode: expected 'r', 'a' or 'w', got {mode!r}")
        self.path = Path(path)
        self.episode_dir = self.path.with_name(self.path.name + ".episodes")
        self.mode = mode
        self._closed = False
        self._stamp: tuple | None = None
        self._names: list[str] = []
        self._env_meta: dict[str, Any] = {}
        self._stats = action_quantiles(np.zeros((0, ACTION_DIM)))
        self._actions: list[np.ndarray] = []  # writer-side cache for the statistics
        if mode == "w":
            if self.path.exists():
                self.path.unlink()
            if self.episode_dir.exists():
                shutil.rmtree(self.episode_dir)
        if mode == "r" and not self.path.exists():
            raise FileNotFoundError(f"trajectory store not found: {self.path}")
        if mode in ("a", "w"):
            self.episode_dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._read_index()  # validates that the file is ours
            self._recover()
            if env_meta is not None:
                self._env_meta = dict(env_meta)
            self._actions = [self._read_actions(n) for n in self._names]
            self._write_index()
        else:
            self._read_index()

    # ---- index --------------------------------------------------------------------------
    def _read_index(self) -> None:
        try:
            f = h5py.File(self.path, "r", locking=False)
        except OSError as e:
            raise StoreFormatError(f"{self.path}: not an HDF5 file ({e})") from None
        with f:
            if f.attrs.get("format") != FORMAT or "data" not in f:
                raise StoreFormatError(f"{self.path}: not a wmpo trajectory store (no format marker {FORMAT!r})")
            data = f["data"]
            self._env_meta = json.loads(data.attrs.get("env_args", "{}"))
            self._names = sorted(data.keys(), key=lambda k: int(k.split("_")[1]))
            if "action_stats" in f:
                self._stats = {k: np.asarray(f["action_stats"][k], np.float32) for k in ("q01", "q99")}
        st = self.path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _recover(self) -> None:
        """After a crash: drop temporary files, index complete episode files the index missed."""
        for p in self.episode_dir.iterdir():
            if p.name.endswith(".tmp"):
                p.unlink()
        present = {p.name[:-3] for p in self.episode_dir.iterdir() if _DEMO_RE.match(p.name)}
        self._names = sorted(present, key=lambda k: int(k.split("_")[1]))

    def _write_index(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        total = 0
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            data = f.create_group("data")
            for name in self._names:
                data[name] = h5py.ExternalLink(f"{self.episode_dir.name}/{name}.h5", f"/data/{name}")
            for a in self._actions:
                total += len(a)
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(self._env_meta)
            g = f.create_group("action_stats")
            for k, v in self._stats.items():
                g[k] = v
        _fsync_file(tmp)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        st = self.path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Re-read the index if another process appended since."""
        if self.mode != "r":
            return
        st = self.path.stat()
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp:
            self._read_index()

    # ---- writing ------------------------------------------------------------------------
    def append(self, ep: Episode) -> int:
        """Write `ep` durably; -> its index."""
        self._check_open()
        if self.mode == "r":
            raise ValueError(f"append: store {self.path} is open read-only (mode 'r')")
        check_episode(ep)
        idx = int(self._names[-1].split("_")[1]) + 1 if self._names else 0
        name = f"demo_{idx}"
        final = self.episode_dir / f"{name}.h5"
        tmp = self.episode_dir / f"{name}.h5.tmp"
        frames = np.asarray(ep.frames)
        T = len(frames) - 1
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT + "-episode"
            g = f.create_group(f"data/{name}")
            g.create_dataset("obs/agentview_image", data=frames, chunks=(1, *frames.shape[1:]),
                             compression="gzip", compression_opts=1)
            g["actions"] = np.asarray(ep.actions, np.float32)
            g["rewards"] = np.asarray(ep.rewards, np.float32)
            g["dones"] = np.asarray(ep.dones, np.uint8)
            g["states"] = np.asarray(ep.states, np.float64)
            g.attrs["num_samples"] = T
            g.attrs["success"] = bool(ep.success)
            g.attrs["finish_step"] = int(ep.finish_step)
            g.attrs["instruction"] = str(ep.instruction)
            g.attrs["task"] = str(ep.task)
            g.attrs["meta"] = json.dumps(ep.meta, default=str)
        _fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.episode_dir)
        self._names.append(name)
        self._actions.append(np.asarray(ep.actions, np.float32))
        self._stats = action_quantiles(np.concatenate(self._actions))
        self._write_index()
        return len(self._names) - 1

    # ---- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        self._check_open()
        self.refresh()
        return len(self._names)

    def _episode_file(self, name: str) -> Path:
        return self.episode_dir / f"{name}.h5"

    def _read_actions(self, name: str) -> np.ndarray:
        with h5py.File(self._episode_file(name), "r", locking=False) as f:
            return np.asarray(self._get(f, name, "actions"), np.float32)

    def _get(self, f: h5py.File, name: str, key: str):
        path = f"data/{name}/{key}"
        if path not in f:
            raise KeyError(f"{self._episode_file(name)}: missing key {path!r}")
        return f[path][()]

    def load(self, i: int) -> Episode:
        """Episode number i (0 <= i < len)."""
        self._check_open()
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"i: expected an episode index in [0, {n}), got {i}")
        name = self._names[i]
        path = self._episode_file(name)
        if not path.exists():
            raise KeyError(f"{path}: episode file of {name!r} is missing")
        with h5py.File(path, "r", locking=False) as f:
            frames = self._get(f, name, "obs/agentview_image")
            g = f[f"data/{name}"]
            for attr in ("success", "finish_step", "instruction", "task"):
                if attr not in g.attrs:
                    raise KeyError(f"{path}: missing attribute {attr!r} of data/{name}")
            ep = Episode(
                frames=np.asarray(frames, np.uint8),
                actions=np.asarray(self._get(f, name, "actions"), np.float32),
                states=np.asarray(self._get(f, name, "states"), np.float64),
                rewards=np.asarray(self._get(f, name, "rewards"), np.float32),
                dones=np.asarray(self._get(f, name, "dones")).astype(bool),
                success=bool(g.attrs["success"]),
                finish_step=int(g.attrs["finish_step"]),
                instruction=str(g.attrs["instruction"]),
                task=str(g.attrs["task"]),
                meta=json.loads(g.attrs.get("meta", "{}")),
            )
        try:
            check_episode(ep)
        except ValueError as e:
            raise StoreFormatError(f"{path}: malformed episode {name}: {e}") from None
        return ep

    def __getitem__(self, i: int) -> Episode:
        return self.load(i)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.load(i)

    def episode_lengths(self) -> list[int]:
        """T of every episode (reads only attributes)."""
        out = []
        for name in list(self._names[: len(self)]):
            with h5py.File(self._episode_file(name), "r", locking=False) as f:
                out.append(int(f[f"data/{name}"].attrs["num_samples"]))
        return out

    def action_stats(self) -> dict[str, np.ndarray]:
        """{"q01": float32 [7], "q99": float32 [7]} over all stored actions."""
        self._check_open()
        self.refresh()
        return {k: v.copy() for k, v in self._stats.items()}

    @property
    def env_meta(self) -> dict[str, Any]:
        return dict(self._env_meta)

    # ---- lifetime -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"store {self.path} is closed")

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrajectoryStore({str(self.path)!r}, mode={self.mode!r}, episodes={len(self._names)})"
