"""`wmpo import --format lerobot-hdf5`: episodes of one HDF5 file holding LeRobot's per-frame columns.

Layout read (LeRobot's feature names; a name's dots may also be HDF5 group separators, e.g.
`observation/images/top`):
  observation.images.<camera> (or observation.image)  uint8 [N, H, W, 3]   the frames
  action              float [N, 7]                        action taken at each frame
  episode_index       int   [N]                           frames of one episode are contiguous
  frame_index         int   [N]     optional              0, 1, ... within each episode (checked)
  next.reward         float [N]     optional              reward after each frame's action
  next.done           bool  [N]     optional
  next.success        bool  [N]     optional              success after each frame's action
  observation.state   float [N, S]  optional              stored as the episode's states
  attrs["task"] or --instruction                          the language instruction
An episode of L frames becomes L-1 steps: the last frame's action has no frame showing its result,
so it is dropped; success comes from next.success (any frame), else the last next.reward.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from wmpo.data.episode import Episode
from wmpo.data.import_common import ImportFormatError, check_actions, check_frames, check_steps, make_episode, open_hdf5, outcome


def _find(f: h5py.File, name: str) -> Any:
    for key in (name, name.replace(".", "/")):
        if key in f and isinstance(f[key], h5py.Dataset):
            return f[key]
    return None


def _need(f: h5py.File, name: str, src: Path) -> Any:
    ds = _find(f, name)
    if ds is None:
        have = []
        f.visit(lambda k: have.append(k) if isinstance(f[k], h5py.Dataset) else None)
        raise ImportFormatError(f"{src}: missing key {name!r} (datasets present: {have[:12]}{' ...' if len(have) > 12 else ''})")
    return ds


def _image_name(f: h5py.File, wanted: str | None, src: Path) -> str:
    if wanted is not None:
        _need(f, wanted, src)
        return wanted
    found = []
    f.visit(lambda k: found.append(k.replace("/", ".")) if isinstance(f[k], h5py.Dataset)
            and k.replace("/", ".").startswith(("observation.images.", "observation.image")) else None)
    if len(found) != 1:
        what = "no observation.image / observation.images.<camera> dataset" if not found else f"several cameras {found}"
        raise ImportFormatError(f"{src}: {what}; name the frames with --image-key")
    return found[0]


def read_lerobot_hdf5(path: str | os.PathLike, image: str | None = None, instruction: str | None = None,
                      task: str | None = None) -> tuple[Iterator[Episode], dict]:
    """(episodes, {"task": ...}) of the file at `path` (checked: ImportFormatError naming the key)."""
    src = Path(path)
    f = open_hdf5(src)
    with f:
        key = _image_name(f, image, src)
        frames = _need(f, key, src)
        check_frames(frames, key, src)
        N = len(frames)
        ep_index = check_steps(_need(f, "episode_index", src)[()], N, "episode_index", src)
        check_actions(_need(f, "action", src)[()], N, "action", src)
        text = instruction or (f.attrs["task"].decode() if isinstance(f.attrs.get("task"), bytes) else f.attrs.get("task"))
        if not text:
            raise ImportFormatError(f"{src}: no instruction (no 'task' attribute); pass --instruction")
    change = np.flatnonzero(np.diff(ep_index) != 0) + 1
    bounds = list(zip([0, *change.tolist()], [*change.tolist(), N]))
    ids = [int(ep_index[a]) for a, _ in bounds]
    if len(set(ids)) != len(ids):
        raise ImportFormatError(f"{src}: episode_index: the frames of an episode are not contiguous (episode ids {ids[:10]})")

    def episodes() -> Iterator[Episode]:
        with h5py.File(src, "r") as f:
            cols = {c: _find(f, c) for c in ("next.reward", "next.done", "next.success", "observation.state", "frame_index")}
            for (a, b), eid in zip(bounds, ids):
                yield _episode(f, key, cols, a, b, eid, src, str(text), task or src.stem)

    return episodes(), {"task": str(text)}


def _episode(f: h5py.File, key: str, cols: dict, a: int, b: int, eid: int, src: Path, text: str, task: str) -> Episode:
    L, where = b - a, f"episode {eid}"
    if L < 2:
        raise ImportFormatError(f"{src}: {where}: {L} frame(s); an episode needs at least 2 (one action and its result)")
    col = {k: (None if ds is None else ds[a:b]) for k, ds in cols.items()}
    if col["frame_index"] is not None and not np.array_equal(np.asarray(col["frame_index"]).reshape(-1), np.arange(L)):
        raise ImportFormatError(f"{src}: {where}: frame_index is not 0..{L - 1} (frames out of order or missing)")
    T = L - 1
    actions = check_actions(_find(f, "action")[a:b], L, f"{where}: action", src)[:T]
    rewards = check_steps(col["next.reward"], L, f"{where}: next.reward", src)
    dones = check_steps(col["next.done"], L, f"{where}: next.done", src)
    flags = check_steps(col["next.success"], L, f"{where}: next.success", src)
    success, finish, why = outcome(flags, rewards, L, where, src)
    states = col["observation.state"]
    if states is not None:
        states = np.asarray(states)
        if states.ndim != 2 or len(states) != L:
            raise ImportFormatError(f"{src}: {where}: observation.state: wrong shape: expected [{L}, S], got {states.shape}")
    meta = {"source": str(src.resolve()), "source_format": "lerobot-hdf5", "source_episode": eid, "image_key": key,
            "success_from": why, "dropped_last_action": "the last frame's action has no frame after it"}
    return make_episode(_find(f, key)[a:b], actions,
                        None if rewards is None else rewards[:T], None if dones is None else dones[:T], states,
                        success, min(finish, T), text, task, meta)
