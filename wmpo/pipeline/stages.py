"""Resumable stage runner: each finished stage leaves an atomic marker; a rerun skips it.

A stage is a function `(ctx) -> dict` (its outputs: paths, metrics). After it returns, the dict is
written to OUT/stages/<name>.json (temp file + rename). On a rerun, a stage whose marker exists is
not run again: its recorded outputs are loaded instead. A killed run therefore resumes from the
first stage that did not finish.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from wmpo.utils.checkpoint import save_json


@dataclass
class Stage:
    name: str
    fn: Callable[[Any], dict]
    enabled: bool = True


class StageRunner:
    def __init__(self, out_dir: str | Path, log: Callable[[str], None] = print):
        self.out_dir = Path(out_dir)
        self.marker_dir = self.out_dir / "stages"
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.outputs: dict[str, dict] = {}

    def marker(self, name: str) -> Path:
        return self.marker_dir / f"{name}.json"

    def is_done(self, name: str) -> bool:
        return self.marker(name).is_file()

    def run(self, stages: list[Stage], ctx: Any) -> dict[str, dict]:
        for st in stages:
            if not st.enabled:
                continue
            if self.is_done(st.name):
                self.outputs[st.name] = json.loads(self.marker(st.name).read_text())["outputs"]
                self.log(f"[stage {st.name}] done earlier, skipped")
                continue
            self.log(f"[stage {st.name}] running")
            t0 = time.time()
            out = st.fn(ctx) or {}
            dt = time.time() - t0
            self.outputs[st.name] = out
            save_json(self.marker(st.name), {"stage": st.name, "seconds": dt, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "outputs": out})
            self.log(f"[stage {st.name}] finished in {dt:.1f} s")
        return self.outputs
