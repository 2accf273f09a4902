"""How every `wmpo train-*` command builds its config: preset section, then --config JSON, then --set.

    wmpo train-policy --preset tiny --config more.json --set steps=2000 policy.hidden_size=128

`--preset` picks the section of a pipeline preset (wmpo.config), `--config` is a JSON file of fields
merged over it (nested sections merged field by field), `--set key=value` overrides one field at a
time (`section.field=value` inside the nested architecture; values are parsed as JSON when they
can be). An unknown field anywhere is an error naming it, never silently ignored.
"""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

PRESETS = ["micro", "tiny", "small", "paper"]
T = TypeVar("T")


def add_config_args(ap: argparse.ArgumentParser, example: str) -> None:
    """--preset, --config and --set, with `example` shown in --set's help."""
    ap.add_argument("--preset", default="tiny", choices=PRESETS, help="size preset (wmpo.config)")
    ap.add_argument("--config", help="JSON file of config fields (applied over the preset)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=f"field overrides, e.g. {example}")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, recursing into dicts present in both."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["a=1", "policy.hidden_size=128"] -> {"a": 1, "policy": {"hidden_size": 128}}."""
    d: dict[str, Any] = {}
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"--set: expected key=value, got {ov!r}")
        key, raw = ov.split("=", 1)
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        *path, last = key.split(".")
        node = d
        for p in path:
            node = node.setdefault(p, {})
        node[last] = val
    return d


def build(cls: Callable[..., T], d: dict[str, Any], where: str = "") -> T:
    """Dataclass `cls` from a (nested) dict; unknown keys raise ValueError naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    bad = sorted(set(d) - names)
    if bad:
        raise ValueError(f"config: unknown field(s) {[where + b for b in bad]} for {cls.__name__}; known: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        t = hints.get(k)
        if is_dataclass(t) and isinstance(v, dict):
            v = build(t, v, f"{where}{k}.")
        elif isinstance(v, list) and typing.get_origin(t) is tuple:  # JSON has no tuples
            v = tuple(v)
        kw[k] = v
    return cls(**kw)


def config_from_args(a: argparse.Namespace, section: Callable[[str], Any], extra: dict[str, Any] | None = None) -> Any:
    """The config of `section(preset)` with `a.config` and `a.set` applied (and `extra`, e.g. legacy flags, last)."""
    base = section(a.preset)
    d = json.loads(json.dumps(asdict(base)))
    if getattr(a, "config", None):
        d = merge(d, json.loads(Path(a.config).read_text()))
    d = merge(d, parse_overrides(list(getattr(a, "set", []) or [])))
    if extra:
        d = merge(d, extra)
    return build(type(base), d)


def given(d: dict[str, Any]) -> dict[str, Any]:
    """`d` without the None values (flags not given on the command line), recursively."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = given(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out
