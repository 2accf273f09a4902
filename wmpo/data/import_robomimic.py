"""`wmpo import --format robomimic`: episodes of a robomimic HDF5 dataset (`data/demo_<i>` with
`obs/<key>`, `next_obs/<key>`, `actions`, `rewards`, `dones`, `states`, attrs `num_samples`).

Frames: the image observation (`--image-key`, default `agentview_image`, else the only uint8
[N, H, W, 3] key in `obs/`) gives frames[0..T-1]; the frame after the last action is
`next_obs/<key>[T-1]` (or `obs/<key>[T]` when obs holds T+1 frames, as wmpo stores do). Without
either, the last action (no frame shows its result) is dropped and recorded in the episode's meta.
States: robomimic's [T, S] simulator states get an unknown (NaN) last row. Instruction: the flag,
else the demo's `instruction` / `lang` attribute, else env_args' `instruction`, else an error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from wmpo.data.episode import Episode
from wmpo.data.import_common import (ImportFormatError, check_actions, check_frames, check_steps, is_image, make_episode, need,
                                     open_hdf5, outcome)


def _demo_index(name: str) -> int:
    try:
        return int(name.split("_", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


def image_key(obs: h5py.Group, wanted: str | None, where: str, src: Path) -> str:
    """The image observation to import (see the module docstring)."""
    if wanted is not None:
        check_frames(need(obs, wanted, src), f"{where}/obs/{wanted}", src)
        return wanted
    if "agentview_image" in obs:
        return "agentview_image"  # checked by the caller: a non-image one is an error, not skipped
    images = [k for k in obs if isinstance(obs[k], h5py.Dataset) and is_image(obs[k])]
    if len(images) != 1:
        shapes = {k: f"{obs[k].dtype} {tuple(obs[k].shape)}" for k in obs if isinstance(obs[k], h5py.Dataset)}
        what = "no uint8 [N, H, W, 3] image observation" if not images else f"several image observations {images}"
        raise ImportFormatError(f"{src}: {where}/obs: {what} (non-image frames: {shapes}); name one with --image-key")
    return images[0]


def read_robomimic(path: str | os.PathLike, image: str | None = None, instruction: str | None = None,
                   task: str | None = None) -> tuple[Iterator[Episode], dict]:
    """(episodes, the file's env_args) of the robomimic file at `path`; every demo is checked as it
    is read (ImportFormatError naming the file, the key and the shapes)."""
    src = Path(path)
    f = open_hdf5(src)
    with f:
        data = need(f, "data", src)
        try:
            env_args = json.loads(data.attrs.get("env_args", "{}"))
        except ValueError:
            env_args = {}
        demos = sorted(data.keys(), key=_demo_index)
    if not demos:
        raise ImportFormatError(f"{src}: data/ holds no demos")

    def episodes() -> Iterator[Episode]:
        with h5py.File(src, "r") as f:
            for name in demos:
                yield _episode(f["data"][name], f"data/{name}", src, image, instruction, task, env_args)

    return episodes(), env_args


def _episode(g: h5py.Group, where: str, src: Path, image: str | None, instruction: str | None, task: str | None,
             env_args: dict) -> Episode:
    raw_actions = need(g, "actions", src)[()]
    T = len(raw_actions)
    if "num_samples" in g.attrs and int(g.attrs["num_samples"]) != T:
        raise ImportFormatError(f"{src}: {where}/actions: wrong shape: num_samples is {int(g.attrs['num_samples'])}, "
                                f"actions has {T} rows")
    actions = check_actions(raw_actions, T, f"{where}/actions", src)
    obs = need(g, "obs", src)
    key = image_key(obs, image, where, src)
    frames = obs[key]
    check_frames(frames, f"{where}/obs/{key}", src)
    meta = {"source": str(src.resolve()), "source_format": "robomimic", "source_demo": where.split("/")[-1],
            "image_key": key}
    if len(frames) == T + 1:
        frames = frames[()]
    elif len(frames) == T:
        nxt = g.get(f"next_obs/{key}")
        if nxt is not None:
            check_frames(nxt, f"{where}/next_obs/{key}", src)
            if len(nxt) != T or nxt.shape[1:] != frames.shape[1:]:
                raise ImportFormatError(f"{src}: {where}/next_obs/{key}: wrong shape: expected {(T, *frames.shape[1:])}, "
                                        f"got {tuple(nxt.shape)}")
            frames = np.concatenate([frames[()], nxt[T - 1: T]])
        else:  # no frame shows the last action's result: drop that action
            if T < 2:
                raise ImportFormatError(f"{src}: {where}: one action and no next_obs/{key}: no frame after any action")
            frames, T = frames[()], T - 1
            actions = actions[:T]
            meta["dropped_last_action"] = f"no next_obs/{key}"
    else:
        raise ImportFormatError(f"{src}: {where}/obs/{key}: wrong shape: expected {T} (or {T + 1}) frames for {T} actions, "
                                f"got {len(frames)}")
    n = len(raw_actions)  # the file's steps (T is one less when the last action was dropped)
    rewards = check_steps(g["rewards"][()], n, f"{where}/rewards", src) if "rewards" in g else None
    dones = check_steps(g["dones"][()], n, f"{where}/dones", src) if "dones" in g else None
    states = g["states"][()] if "states" in g else None
    if states is not None:
        if states.ndim != 2 or len(states) not in (n, n + 1):
            raise ImportFormatError(f"{src}: {where}/states: wrong shape: expected [{n}, S] (or [{n + 1}, S]), got {states.shape}")
        states = states[: T + 1]
    flags = g.attrs["success"] if "success" in g.attrs else (g["success"][()] if "success" in g else None)
    success, finish, why = outcome(flags, rewards, n, where, src)  # the file's own flag / last reward
    finish = min(finish, T)
    rewards, dones = (None if rewards is None else rewards[:T]), (None if dones is None else dones[:T])
    meta["success_from"] = why
    text = instruction or _attr(g, "instruction") or _attr(g, "lang") or env_args.get("instruction")
    if not text:
        raise ImportFormatError(f"{src}: {where}: no instruction (no 'instruction' / 'lang' attribute, none in env_args); "
                                f"pass --instruction")
    name = task or _attr(g, "task") or str(env_args.get("env_name") or src.stem)
    return make_episode(frames, actions, rewards, dones, states, success, finish, str(text), name, meta)


def _attr(g: h5py.Group, key: str) -> str | None:
    v = g.attrs.get(key)
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)
