"""The run folder's config.json: written by the first run, compared on every resume (a changed value
is refused; fields the code added since are recorded with --upgrade-config)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wmpo.config import RunConfig
from wmpo.utils.checkpoint import load_json, save_json


def config_changes(saved: Any, now: Any, prefix: str = "") -> tuple[list[str], list[str]]:
    """(fields whose value differs or that the code dropped, fields the code added since `saved` was written)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        changed: list[str] = [prefix + k for k in saved if k not in now]
        added: list[str] = [prefix + k for k in now if k not in saved]
        for k in saved.keys() & now.keys():
            c, a = config_changes(saved[k], now[k], f"{prefix}{k}.")
            changed += c
            added += a
        return changed, added
    return ([prefix.rstrip(".")] if saved != now else []), []


def check_or_write_config(cfg: RunConfig, out: Path, upgrade_config: bool) -> str | None:
    """Save out/config.json, or compare with the one there; -> the refusal message, None when it may run."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    resolved = asdict(cfg)
    if cfg_path.is_file():
        saved = load_json(cfg_path, what="run config")
        now = json.loads(json.dumps(resolved, default=str))
        if now != saved:
            changed, added = config_changes(saved, now)
            if changed or not upgrade_config:
                hint = (f"; fields the code added since: {added[:8]} (--upgrade-config records them)" if added and not changed else "")
                return (f"out: {out} holds a run with a different config ({cfg_path}"
                        f"{', changed: ' + str(changed[:8]) if changed else ''}){hint}; use a new --out or the same options")
            print(f"wmpo run: config of {out} upgraded with the fields added since it was written: {added}")
            save_json(cfg_path, resolved)
    else:
        save_json(cfg_path, resolved)
    return None
