"""Resumable stage runner: each finished stage leaves an atomic marker; a rerun skips it.

A stage is a function `(ctx) -> dict` (its outputs: paths, metrics). After it returns, the dict is
written to OUT/stages/<name>.json (temp file + rename). On a rerun, a stage whose marker exists is
not run again: its recorded outputs are loaded instead. A killed run therefore resumes from the
first stage that did not finish.

Paths in a marker are relative to the run folder: every output string naming an existing file or
folder inside OUT is stored relative to OUT, and the marker lists where (`"run_relative"`, key paths
into `outputs`). Loading joins them to the folder the marker is read from, so a copied run folder
uses its own files and a moved one resumes. Markers written before this (absolute paths, no
`run_relative`) still load, their paths as written; a warning names any that point outside the run
folder (a copy of an old run folder still uses the original's files).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from wmpo.dist import SINGLE, DistContext
from wmpo.utils.checkpoint import load_json, save_json

KeyPath = list  # keys (str) and list indices (int) from `outputs` down to a value


@dataclass
class Stage:
    name: str
    fn: Callable[[Any], dict]
    enabled: bool = True
    distributed: bool = False
    """run on every rank of a process group (the stage splits its work); else rank 0 runs it alone"""


def _inside(path: str, root: Path) -> Path | None:
    """`path` relative to `root` when it names an existing file or folder inside it, else None."""
    if not path or "\n" in path or len(path) > 4096:
        return None
    p = Path(path)
    try:
        if not p.exists():
            return None
        rel = p.resolve().relative_to(root)
    except (OSError, ValueError):
        return None
    return rel


def relativize(outputs: Any, root: Path) -> tuple[Any, list[KeyPath]]:
    """`outputs` with paths inside `root` made relative to it, and the key paths of those values."""
    root = root.resolve()
    found: list[KeyPath] = []

    def walk(x: Any, at: KeyPath) -> Any:
        if isinstance(x, dict):
            return {k: walk(v, at + [k]) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, at + [i]) for i, v in enumerate(x)]
        if isinstance(x, os.PathLike):
            x = os.fspath(x)
        if isinstance(x, str):
            rel = _inside(x, root)
            if rel is not None:
                found.append(at)
                return rel.as_posix()
        return x

    return walk(outputs, []), found


def _get(x: Any, at: KeyPath) -> Any:
    for k in at:
        x = x[k]
    return x


def _set(x: Any, at: KeyPath, value: Any) -> None:
    for k in at[:-1]:
        x = x[k]
    x[at[-1]] = value


def absolutize(outputs: Any, run_relative: list[KeyPath], root: Path) -> Any:
    """Inverse of `relativize` for the run folder `root` (may differ from the one that wrote it)."""
    for at in run_relative:
        _set(outputs, at, str(root / _get(outputs, at)))
    return outputs


class StageRunner:
    def __init__(self, out_dir: str | Path, log: Callable[[str], None] = print, dist: DistContext = SINGLE):
        """dist: under torchrun, rank 0 runs the single-process stages and writes every marker while the other
        ranks wait; stages marked `distributed` run on every rank; all ranks then read the marker."""
        self.out_dir = Path(out_dir)
        self.marker_dir = self.out_dir / "stages"
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        self.dist = dist
        self.log = log if dist.is_main else (lambda msg: None)
        self.outputs: dict[str, dict] = {}

    def marker(self, name: str) -> Path:
        return self.marker_dir / f"{name}.json"

    def is_done(self, name: str) -> bool:
        return self.marker(name).is_file()

    def load_marker(self, name: str) -> dict:
        """The recorded outputs of stage `name`, paths resolved against this run folder."""
        path = self.marker(name)
        m = load_json(path, what=f"stage marker of {name!r}")
        if not isinstance(m, dict) or not isinstance(m.get("outputs"), dict):
            raise ValueError(f"{path}: not a stage marker (expected an object with 'outputs'); delete it to rerun the stage")
        outputs = m["outputs"]
        rel = m.get("run_relative")
        if rel is not None:
            try:
                return absolutize(outputs, rel, self.out_dir)
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{path}: damaged stage marker ('run_relative' does not match 'outputs'); "
                                 f"delete it to rerun the stage") from None
        root = self.out_dir.resolve()
        _, inside = relativize(outputs, root)
        outside = [_get(outputs, at) for at in _absolute_strings(outputs) if at not in inside]
        if outside:
            warnings.warn(f"{path}: written before markers held run-relative paths; it names "
                          f"{', '.join(map(str, outside[:3]))}{', ...' if len(outside) > 3 else ''} outside the run "
                          f"folder {self.out_dir}, used as written", stacklevel=2)
        return outputs

    def run(self, stages: list[Stage], ctx: Any) -> dict[str, dict]:
        for st in stages:
            if not st.enabled:
                continue
            if self.dist.broadcast_object(self.is_done(st.name)):  # rank 0's answer for every rank
                self.outputs[st.name] = self.load_marker(st.name)
                self.log(f"[stage {st.name}] done earlier, skipped")
                continue
            self.log(f"[stage {st.name}] running" + (f" on {self.dist.world_size} ranks" if st.distributed and self.dist.enabled else ""))
            t0 = time.time()
            if st.distributed or self.dist.is_main:
                out = st.fn(ctx) or {}
            if self.dist.is_main:
                dt = time.time() - t0
                self.outputs[st.name] = out
                stored, rel = relativize(out, self.out_dir)
                save_json(self.marker(st.name), {"stage": st.name, "seconds": dt, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                 "outputs": stored, "run_relative": rel})
                self.log(f"[stage {st.name}] finished in {dt:.1f} s")
            if self.dist.enabled:
                self.dist.barrier()  # the other ranks wait for rank 0's marker, then read it
                if not self.dist.is_main:
                    self.outputs[st.name] = self.load_marker(st.name)
        return self.outputs


def _absolute_strings(x: Any, at: KeyPath | None = None) -> list[KeyPath]:
    """Key paths of the absolute-path-looking strings in `x`."""
    at = at or []
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _absolute_strings(v, at + [k])]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _absolute_strings(v, at + [i])]
    return [at] if isinstance(x, str) and os.path.isabs(x) and "\n" not in x else []
