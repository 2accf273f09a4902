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

Runs that outlive their machine: a run folder can be kept without its data (the stores are large;
the checkpoints and markers are small, see experiments/persist.py). A *regenerable* stage (one that
only collects data, deterministically from its seeds and earlier checkpoints) whose recorded files
are gone is rerun when a later stage first asks for its outputs (`StageRunner.output`), not before: a
run that only has evaluation left never re-collects its demos. A *live* stage runs on every
invocation (its outputs describe what is there now, e.g. a corpus used as it is). Every stage that
finishes appends one line to OUT/stages/history.jsonl (name, time, seconds, whether it regenerated),
so the wall time of a stage spread over several machines adds up.
"""
from __future__ import annotations

import json
import os
import socket
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
    regenerable: bool = False
    """a data stage: rerun (same seeds, same checkpoints) when the files its marker names are gone"""
    live: bool = False
    """run on every invocation, never skipped (its outputs describe the present, not the past)"""
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

    def missing_files(self, name: str) -> list[str]:
        """Files or folders the marker of `name` recorded as existing that are gone now."""
        m = load_json(self.marker(name), what=f"stage marker of {name!r}")
        outputs = self.load_marker(name)
        # markers written before "files" was recorded: their run-relative paths existed when written
        recorded = m["files"] if "files" in m else m.get("run_relative", [])
        return [str(_get(outputs, at)) for at in recorded if not Path(str(_get(outputs, at))).exists()]

    def run(self, stages: list[Stage], ctx: Any) -> dict[str, dict]:
        self.stages = {st.name: st for st in stages if st.enabled}
        self.stale: dict[str, list[str]] = {}
        for st in stages:
            if not st.enabled:
                continue
            done = self.dist.broadcast_object(self.is_done(st.name) and not st.live)  # rank 0's answer for every rank
            if done:
                gone = self.dist.broadcast_object(self.missing_files(st.name) if st.regenerable and self.dist.is_main else [])
                if gone:
                    self.stale[st.name] = gone
                    self.log(f"[stage {st.name}] done earlier; its data is gone ({gone[0]}{', ...' if len(gone) > 1 else ''}): "
                             f"regenerated when a later stage needs it")
                else:
                    self.outputs[st.name] = self.load_marker(st.name)
                    self.log(f"[stage {st.name}] done earlier, skipped")
                continue
            self._run_one(st, ctx)
        return self.outputs

    def output(self, name: str, ctx: Any) -> dict:
        """The outputs of stage `name`; a regenerable stage whose data is gone is rerun first."""
        if name in getattr(self, "stale", {}):
            if not self.dist.is_main:
                raise RuntimeError(f"stage {name}: its data is gone and only rank 0 regenerates data; a stage that needs it "
                                   f"must not be `distributed`")
            self.log(f"[stage {name}] regenerating its data (gone: {self.stale[name][0]})")
            self._run_one(self.stages[name], ctx, regenerated=True)
            del self.stale[name]
        return self.outputs[name]

    def _run_one(self, st: Stage, ctx: Any, regenerated: bool = False) -> None:
        """Run one stage. Under a process group (and not a regeneration, which rank 0 does alone inside
        another stage): a `distributed` stage runs on every rank, any other on rank 0 while the others
        wait; rank 0 writes the marker, every rank then reads it."""
        collective = self.dist.enabled and not regenerated
        self.log(f"[stage {st.name}] running" + (f" on {self.dist.world_size} ranks" if st.distributed and collective else ""))
        t0 = time.time()
        if st.distributed or self.dist.is_main:
            out = st.fn(ctx) or {}
        if self.dist.is_main:
            dt = time.time() - t0
            self.outputs[st.name] = out
            stored, rel = relativize(out, self.out_dir)
            files = [at for at in _path_strings(out) if Path(str(_get(out, at))).exists()]
            finished = time.strftime("%Y-%m-%dT%H:%M:%S")
            save_json(self.marker(st.name), {"stage": st.name, "seconds": dt, "finished": finished, "outputs": stored,
                                             "run_relative": rel, "files": files})
            with open(self.marker_dir / "history.jsonl", "a") as f:
                f.write(json.dumps({"stage": st.name, "finished": finished, "seconds": round(dt, 1), "regenerated": regenerated,
                                    "host": socket.gethostname()}) + "\n")
            self.log(f"[stage {st.name}] finished in {dt:.1f} s")
        if collective:
            self.dist.barrier()  # the other ranks wait for rank 0's marker, then read it
            if not self.dist.is_main:
                self.outputs[st.name] = self.load_marker(st.name)

    def history_seconds(self) -> dict[str, float]:
        """Per stage: seconds summed over every time it ran (across machines and resumes)."""
        path = self.marker_dir / "history.jsonl"
        total: dict[str, float] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    total[rec["stage"]] = total.get(rec["stage"], 0.0) + float(rec["seconds"])
                except (ValueError, KeyError, TypeError):
                    continue
        return total


def _path_strings(x: Any, at: KeyPath | None = None) -> list[KeyPath]:
    """Key paths of the strings in `x` that name an existing file or folder."""
    at = at or []
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _path_strings(v, at + [k])]
    if isinstance(x, (list, tuple)):
        return [p for i, v in enumerate(x) for p in _path_strings(v, at + [i])]
    if isinstance(x, os.PathLike):
        x = os.fspath(x)
    ok = isinstance(x, str) and 0 < len(x) < 4096 and "\n" not in x and ("/" in x or os.sep in x)
    return [at] if ok and Path(x).exists() else []


def _absolute_strings(x: Any, at: KeyPath | None = None) -> list[KeyPath]:
    """Key paths of the absolute-path-looking strings in `x`."""
    at = at or []
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _absolute_strings(v, at + [k])]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _absolute_strings(v, at + [i])]
    return [at] if isinstance(x, str) and os.path.isabs(x) and "\n" not in x else []
