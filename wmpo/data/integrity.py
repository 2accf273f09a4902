"""What keeps stored episodes intact: durable writes (fsync of files and folders) and the sha256
checksums of datasets, attributes and action statistics that the store verifies on every read."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


class StoreFormatError(ValueError):
    """The file is not a wmpo trajectory store, or an episode in it is malformed."""


class CorruptEpisodeError(StoreFormatError, KeyError):
    """An episode file is missing, unreadable, incomplete or fails its checksum; `.path` names it."""

    def __init__(self, path: Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.args[0])


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


def _digest(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _attrs_digest(attrs: dict[str, Any]) -> str:
    canon = {"num_samples": int(attrs["num_samples"]), "success": bool(attrs["success"]),
             "finish_step": int(attrs["finish_step"]), "instruction": str(attrs["instruction"]),
             "task": str(attrs["task"]), "meta": str(attrs.get("meta", "{}"))}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def _stats_digest(stats: dict[str, np.ndarray]) -> str:
    return _digest(np.concatenate([np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)]))


def read_checksums(g, path: Path) -> dict[str, str] | None:
    """The checksums stored on an episode's HDF5 group (None: written before checksums existed)."""
    raw = g.attrs.get("checksums")
    if raw is None:
        return None  # written before checksums existed: not verified
    try:
        sums = json.loads(raw)
        assert isinstance(sums, dict)
    except (ValueError, AssertionError):
        raise CorruptEpisodeError(path, "damaged checksum attribute") from None
    return sums


def verify_checksum(sums: dict[str, str] | None, key: str, value, path: Path) -> None:
    """CorruptEpisodeError naming `path` unless `value` (a dataset, or the attributes for key "attrs")
    matches its stored checksum; nothing to check without one."""
    if sums is None or key not in sums:
        return
    got = _attrs_digest(value) if key == "attrs" else _digest(value)
    if got != sums[key]:
        what = "attributes" if key == "attrs" else f"dataset {key!r}"
        raise CorruptEpisodeError(path, f"checksum mismatch in {what}: the episode file is damaged")
