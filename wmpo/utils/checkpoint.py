"""Atomic checkpoints: written to a temp file in the same folder, fsynced, then renamed.

A crash while saving leaves the previous checkpoint intact; a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """`write(file)` into a temp file next to `path`, fsync, rename over `path` (a crash leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save `state` to `path` atomically (temp file + fsync + rename)."""
    _atomic_write(path, lambda f: torch.save(state, f))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, corrupt, or of another kind."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`: FileNotFoundError if it is missing, CheckpointError
    (naming the file) if it is a folder, empty, truncated, corrupt or not a dict of state."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint file, got a folder")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch/zipfile/pickle raise many kinds for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt? ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint (a dict of state), got a {type(state).__name__}")
    return state


def build_from_checkpoint(path: str | os.PathLike, build: Callable[[dict[str, Any]], T], what: str,
                          map_location: str | torch.device = "cpu") -> T:
    """`build(state)` of the checkpoint at `path`; a state of another kind (missing keys, foreign
    config fields, mismatched weights) raises CheckpointError naming the file and `what` was expected."""
    state = load_checkpoint(path, map_location)
    try:
        return build(state)
    except (KeyError, TypeError, AttributeError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: expected {what}, got a checkpoint of another kind (keys {sorted(state)[:8]}; "
                              f"{type(e).__name__}: {msg})") from None


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse the JSON file at `path`; errors name the file (FileNotFoundError, or ValueError when
    it is a folder, unreadable or not valid JSON)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: expected a {what}, got a folder")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: unreadable {what} (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: unreadable {what} (invalid JSON at line {e.lineno} column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise ValueError(f"{path}: unreadable {what} ({e.strerror})") from None


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` (dataclasses allowed) as indented JSON, atomically."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
