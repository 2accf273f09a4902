"""One episode as an HDF5 group in robomimic's layout: how the trajectory store writes it, reads it
back (verified) and exposes it to robomimic.

A group `data/demo_<i>` holds
  obs/agentview_image       uint8   [T+1, H, W, 3]  chunked per frame, gzip 1 (frames[T] follows the
                                                    last action; robomimic reads only the first
                                                    num_samples = T of them)
  next_obs/agentview_image  uint8   [T, H, W, 3]    a virtual dataset mapping obs/agentview_image[1:]
                                                    (zero-copy: no frame is stored twice)
  actions float32 [T, 7], rewards float32 [T], dones uint8 [T], states float64 [T+1, S]
  attrs: num_samples (T), success, finish_step, instruction, task, meta (JSON), checksums (JSON)

The virtual dataset names its source file "." (the file that holds it), so it stays valid when the
file is copied, renamed, opened through an external link, or is a single-file export.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from wmpo.data.episode import Episode, check_episode
from wmpo.data.integrity import CorruptEpisodeError, _attrs_digest, _digest, read_checksums, verify_checksum

IMAGE_KEY = "obs/agentview_image"
NEXT_IMAGE_KEY = "next_obs/agentview_image"
DATASETS = (IMAGE_KEY, "actions", "rewards", "dones", "states")
ATTRS = ("num_samples", "success", "finish_step", "instruction", "task")


def episode_record(ep: Episode) -> tuple[dict[str, np.ndarray], dict]:
    """(datasets, attributes) of `ep` as stored; checks `ep` first (ValueError naming the field)."""
    check_episode(ep)
    arrays = {
        IMAGE_KEY: np.ascontiguousarray(ep.frames, np.uint8),
        "actions": np.ascontiguousarray(ep.actions, np.float32),
        "rewards": np.ascontiguousarray(ep.rewards, np.float32),
        "dones": np.ascontiguousarray(ep.dones, np.uint8),
        "states": np.ascontiguousarray(ep.states, np.float64),
    }
    attrs = {"num_samples": len(arrays[IMAGE_KEY]) - 1, "success": bool(ep.success), "finish_step": int(ep.finish_step),
             "instruction": str(ep.instruction), "task": str(ep.task), "meta": json.dumps(ep.meta, default=str)}
    return arrays, attrs


def add_next_obs(g: h5py.Group) -> None:
    """next_obs/agentview_image: a virtual dataset over obs/agentview_image[1:] of the same file."""
    src = g[IMAGE_KEY]
    T = src.shape[0] - 1
    layout = h5py.VirtualLayout(shape=(T, *src.shape[1:]), dtype=src.dtype)
    layout[:] = h5py.VirtualSource(".", src.name, shape=src.shape)[1:]
    g.require_group("next_obs").create_virtual_dataset("agentview_image", layout)


def write_episode_group(parent: h5py.Group, name: str, arrays: dict[str, np.ndarray], attrs: dict,
                        checksums: str | None = None) -> h5py.Group:
    """Create `parent/name` holding the episode (checksums computed here unless given, as JSON)."""
    if checksums is None:
        sums = {k: _digest(v) for k, v in arrays.items()}
        sums["attrs"] = _attrs_digest(attrs)
        checksums = json.dumps(sums, sort_keys=True)
    frames = arrays[IMAGE_KEY]
    g = parent.create_group(name)
    g.create_dataset(IMAGE_KEY, data=frames, chunks=(1, *frames.shape[1:]), compression="gzip", compression_opts=1)
    for k in DATASETS[1:]:
        g[k] = arrays[k]
    for k, v in attrs.items():
        g.attrs[k] = v
    g.attrs["checksums"] = checksums
    add_next_obs(g)
    return g


def _get(g: h5py.Group, path: Path, key: str):
    if key not in g:
        raise CorruptEpisodeError(path, f"missing key {g.name.lstrip('/') + '/' + key!r}")
    return g[key][()]


def read_actions(g: h5py.Group, path: Path) -> np.ndarray:
    """The group's actions, verified against their checksum."""
    try:
        a = _get(g, path, "actions")
        verify_checksum(read_checksums(g, path), "actions", a, path)
    except CorruptEpisodeError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise CorruptEpisodeError(path, f"unreadable episode file ({type(e).__name__}: {e})") from None
    return np.asarray(a, np.float32)


def read_episode_group(g: h5py.Group, path: Path) -> Episode:
    """The Episode in group `g` (of file `path`, named in errors), every checksum verified."""
    name = g.name.rsplit("/", 1)[-1]
    try:
        raw = {k: _get(g, path, k) for k in DATASETS}
        for attr in ATTRS:
            if attr not in g.attrs:
                raise CorruptEpisodeError(path, f"missing attribute {attr!r} of data/{name}")
        attrs = {k: g.attrs[k] for k in ATTRS}
        attrs["meta"] = g.attrs.get("meta", "{}")
        sums = read_checksums(g, path)
        for k in DATASETS:
            verify_checksum(sums, k, raw[k], path)
        verify_checksum(sums, "attrs", attrs, path)
        ep = Episode(
            frames=np.asarray(raw[IMAGE_KEY], np.uint8),
            actions=np.asarray(raw["actions"], np.float32),
            states=np.asarray(raw["states"], np.float64),
            rewards=np.asarray(raw["rewards"], np.float32),
            dones=np.asarray(raw["dones"]).astype(bool),
            success=bool(attrs["success"]),
            finish_step=int(attrs["finish_step"]),
            instruction=str(attrs["instruction"]),
            task=str(attrs["task"]),
            meta=json.loads(attrs["meta"]),
        )
    except CorruptEpisodeError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CorruptEpisodeError(path, f"unreadable episode file ({type(e).__name__}: {e})") from None
    try:
        check_episode(ep)
    except ValueError as e:
        raise CorruptEpisodeError(path, f"malformed episode {name}: {e}") from None
    return ep
