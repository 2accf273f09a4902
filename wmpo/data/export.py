"""`wmpo export --single-file`: one self-contained HDF5 file from a trajectory store (index + episode
folder), readable by robomimic, h5py and TrajectoryStore (mode "r") with nothing next to it.

The file is the store's index with every `data/demo_<i>` a real group instead of an external link
(obs, next_obs as a virtual dataset into the same file, actions, rewards, dones, states, the
episode's attributes and checksums exactly as stored), plus `env_args`, `total`, `action_stats`,
robomimic's `mask/` filter keys and `attrs["layout"] = "single-file"`. Every episode is verified
against its checksums on the way; a damaged one stops the export naming its file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from wmpo.data.episode_file import ATTRS, episode_record, read_episode_group, write_episode_group
from wmpo.data.integrity import _fsync_file, _stats_digest
from wmpo.data.store import FORMAT, SINGLE_FILE, VERSION, StoreFormatError, TrajectoryStore


def export_single_file(store_path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the store at `store_path` as one file `out` (written to a temporary name, then renamed)
    -> {"episodes", "actions", "path", "bytes"}."""
    out = Path(out)
    if out.resolve() == Path(store_path).resolve():
        raise ValueError(f"out: {out} is the store itself; export to another path")
    tmp = out.with_name(out.name + ".tmp")
    with TrajectoryStore(store_path, "r") as store:
        names = store.names
        if not names:
            raise StoreFormatError(f"{store.path}: holds no episodes; nothing to export")
        stats = store.action_stats()
        total = 0
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["layout"] = SINGLE_FILE
            if store.store_id:
                f.attrs["store_id"] = store.store_id
            f.attrs["exported_from"] = str(store.path.resolve())
            data = f.create_group("data")
            for name in names:
                with store._open_episode(name) as ef:
                    g = store._group(ef, name)
                    ep = read_episode_group(g, store._episode_file(name))  # verified
                    attrs = {k: g.attrs[k] for k in ATTRS}
                    attrs["meta"] = g.attrs.get("meta", "{}")
                    sums = g.attrs.get("checksums")
                arrays, _ = episode_record(ep)
                write_episode_group(data, name, arrays, attrs, None if sums is None else str(sums))
                total += len(ep.actions)
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(store.env_meta)
            sg = f.create_group("action_stats")
            for k, v in stats.items():
                sg[k] = v
            sg.attrs["sha256"] = _stats_digest(stats)
            with h5py.File(store.path, "r", locking=False) as index:
                if "mask" in index:
                    index.copy(index["mask"], f, "mask")
    _fsync_file(tmp)
    os.replace(tmp, out)
    return {"episodes": len(names), "actions": total, "path": str(out), "bytes": out.stat().st_size}
