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
import math
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Callable, TypeVar

from wmpo.utils.arg_checks import check_device, check_input_file, check_output_dir
from wmpo.utils.checkpoint import load_json

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


VALUE_MAY_BE_ZERO = {"seed", "warmup_steps", "crop_pad", "eval_every", "vision_layers", "instr_layers", "fusion_layers"}
"""integer fields where 0 is meaningful (a seed, "no warm-up", "no crop", "never evaluate", no such layers)"""
BELOW_ONE = {"val_fraction", "test_fraction", "dropout", "betas"}
"""fields in [0, 1)"""
AT_MOST_ONE = {"ema_decay", "threshold", "t_context", "min_lr_ratio"}
"""fields in [0, 1]"""


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def check_value(name: str, value: Any, t: Any) -> Any:
    """`value` for a field `name` of type `t` (JSON lists become tuples where `t` is a tuple);
    ValueError naming the field unless the value has that type and a sensible range."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any or t is None:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(name, value, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{name}: expected {_type_name(t)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{name}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list ({_type_name(t)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ValueError(f"{name}: expected {len(args)} values ({_type_name(t)}), got {len(value)}: {value!r}")
        elem = (lambda i: args[0]) if (not args or args[-1] is Ellipsis or origin is list) else (lambda i: args[i])
        out = [check_value(f"{name}[{i}]", v, elem(i) if args else Any) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or t is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected an object, got {value!r}")
        return value
    base = name.split(".")[-1].split("[")[0]
    if t is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        lo = 0 if base in VALUE_MAY_BE_ZERO else 1
        if value < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {value}")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if base in BELOW_ONE and value >= 1:
            raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
        if base in AT_MOST_ONE and value > 1:
            raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        return value
    if t is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set name=123` parses as JSON 123
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    if is_dataclass(t):
        raise ValueError(f"{name}: expected an object of {t.__name__} fields, got {value!r}")
    return value


def build(cls: Callable[..., T], d: dict[str, Any], where: str = "") -> T:
    """Dataclass `cls` from a (nested) dict; unknown keys and values of the wrong type or range
    raise ValueError naming them."""
    if not isinstance(d, dict):
        raise ValueError(f"config{' ' + where.rstrip('.') if where else ''}: expected an object of "
                         f"{cls.__name__} fields, got {d!r}")
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
        else:
            v = check_value(where + k, v, t)
        kw[k] = v
    return cls(**kw)


COUNT_FLAGS = ("steps", "batch_size", "frame_size", "episodes", "max_frames", "workers", "max_steps")
"""integer flags that count something: >= 1 when given"""


def check_command_args(a: argparse.Namespace) -> None:
    """Check the flags the commands share, before any work: counts (`COUNT_FLAGS`) >= 1, `seed`
    >= 0, `out` (a folder that is not a file and can be written), `device`, `store` (existing trajectory stores), `config`, and the checkpoint
    paths `vae`, `init_from`, `world_model` (existing, non-empty, of the right kind)."""
    for name in COUNT_FLAGS:
        v = getattr(a, name, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v!r}")
    for name in ("seed",):
        v = getattr(a, name, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"--{name}: expected an integer >= 0, got {v!r}")
    if getattr(a, "out", None) is not None:
        check_output_dir(a.out, "--out")
    if getattr(a, "device", None) is not None:
        check_device(a.device, "--device")
    for p in getattr(a, "store", None) or []:
        from wmpo.data.store import TrajectoryStore

        check_input_file(p, "--store")
        with TrajectoryStore(p, "r"):
            pass
    if getattr(a, "vae", None) is not None:
        check_checkpoint(a.vae, "--vae", "vae")
    for flag in ("init_from", "world_model"):
        if getattr(a, flag, None) is not None:
            check_checkpoint(getattr(a, flag), "--" + flag.replace("_", "-"), "world_model")


def check_checkpoint(path: str, flag: str, kind: str) -> None:
    """`path` is a readable checkpoint of `kind` ("vae" or "world_model"): its model config has that
    model's fields and it has weights. ValueError naming the flag and the file otherwise."""
    from wmpo.utils.checkpoint import CheckpointError, load_checkpoint

    check_input_file(path, flag)
    try:
        st = load_checkpoint(path)
    except CheckpointError as e:
        raise ValueError(f"{flag}: {e}") from None
    if kind == "vae":
        from wmpo.models.vae import VAEConfig as cfg_cls
        what = "a VAE checkpoint (vae.pt from `wmpo train-vae`)"
    else:
        from wmpo.models.world_model import WorldModelConfig as cfg_cls
        what = "a world-model checkpoint (world_model.pt from `wmpo train-wm`)"
    m = st.get("model", st)
    cfg = m.get("config") if isinstance(m, dict) else None
    known = {f.name for f in fields(cfg_cls)}
    if not isinstance(cfg, dict) or "state_dict" not in m or not set(cfg) <= known:
        raise ValueError(f"{flag}: {path}: expected {what}, got a checkpoint of another kind "
                         f"(kind {st.get('kind')!r}, keys {sorted(st)[:8]})")


def config_from_args(a: argparse.Namespace, section: Callable[[str], Any], extra: dict[str, Any] | None = None) -> Any:
    """The config of `section(preset)` with `a.config` and `a.set` applied (and `extra`, e.g. legacy flags, last)."""
    base = section(a.preset)
    d = json.loads(json.dumps(asdict(base)))
    if getattr(a, "config", None):
        extra_cfg = load_json(a.config, what="--config JSON file")
        if not isinstance(extra_cfg, dict):
            raise ValueError(f"--config: {a.config}: expected a JSON object of config fields, got {type(extra_cfg).__name__}")
        d = merge(d, extra_cfg)
    d = merge(d, parse_overrides(list(getattr(a, "set", []) or [])))
    if extra:
        d = merge(d, extra)
    cfg = build(type(base), d)
    check_command_args(a)
    return cfg


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
