"""Checks of command-line values, run while the arguments are parsed, before any work is done.

Each is an argparse `type=`: a bad value ends the command with one `error: argument --flag: ...`
line (exit 2) naming what was expected and what was given. The same checks are callable directly
(`check_output_dir(path, "--out")`, ...) where a value does not come from argparse.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable


def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: an integer >= lo."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v

    parse.__name__ = f"int_at_least_{lo}"
    return parse


def positive_float(s: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s!r}")
    return v


def check_device(s: str, name: str = "--device") -> str:
    """`s` if torch can use that device here: 'cpu', 'cuda', 'cuda:N' (N < the GPU count), 'mps'."""
    import torch

    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name}: expected a torch device such as 'cpu', 'cuda' or 'cuda:0', got {s!r}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"{name}: {s!r} asks for a CUDA GPU, but none is available here (use 'cpu')")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{name}: {s!r} asks for GPU {dev.index}, but only {n} GPU(s) are available")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{name}: 'mps' is not available here (use 'cpu')")
    elif dev.type != "cpu":
        raise ValueError(f"{name}: expected 'cpu', 'cuda[:N]' or 'mps', got {s!r}")
    return s


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_dir(d: Path) -> bool:
    """Whether a file can be created in the folder `d` (tried: os.access is wrong for root and read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=d):
            return True
    except OSError:
        return False


def check_output_dir(path: str | os.PathLike, name: str = "--out") -> Path:
    """An output folder: absent (created later) or a writable folder; never an existing file."""
    p = Path(path)
    if str(path) == "":
        raise ValueError(f"{name}: expected a folder path, got ''")
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name}: expected a folder, but {p} is a file")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise ValueError(f"{name}: cannot create the folder {p}: {base} is a file")
    if not _writable_dir(base):
        raise ValueError(f"{name}: {base} is read-only (cannot write {p})")
    return p


def check_output_file(path: str | os.PathLike, name: str = "--out") -> Path:
    """An output file: not a folder; it, or the folder it will be created in, is writable."""
    p = Path(path)
    if str(path) == "" or str(path).endswith(os.sep):
        raise ValueError(f"{name}: expected a file path, got {str(path)!r}")
    if p.is_dir():
        raise ValueError(f"{name}: expected a file, but {p} is a folder")
    base = _nearest_existing(p.parent if not p.exists() else p)
    if p.exists():
        if not os.access(p, os.W_OK) or not _writable_dir(p.parent):
            raise ValueError(f"{name}: {p} is read-only")
        return p
    if not base.is_dir():
        raise ValueError(f"{name}: cannot create {p}: {base} is a file")
    if not _writable_dir(base):
        raise ValueError(f"{name}: {base} is read-only (cannot write {p})")
    return p


def check_input_file(path: str | os.PathLike, name: str) -> Path:
    """An existing, non-empty, readable file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: {p} does not exist")
    if p.is_dir():
        raise ValueError(f"{name}: expected a file, but {p} is a folder")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{name}: {p} is not readable")
    if p.stat().st_size == 0:
        raise ValueError(f"{name}: {p} is empty")
    return p


def argtype(check: Callable[..., object]) -> Callable[[str], str]:
    """argparse type from a `check(value)` that raises ValueError / FileNotFoundError: -> the value, unchanged."""

    def parse(s: str) -> str:
        try:
            check(s)
        except (ValueError, OSError) as e:
            msg = str(e)
            # the flag is named by argparse itself ("argument --out: ...")
            raise argparse.ArgumentTypeError(msg.split(": ", 1)[1] if msg.startswith("--") else msg) from None
        return s

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


device_arg = argtype(lambda s: check_device(s, "--device"))
output_dir_arg = argtype(lambda s: check_output_dir(s, "--out"))
output_file_arg = argtype(lambda s: check_output_file(s, "--out"))
