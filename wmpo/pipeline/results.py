"""OUT/result.json: one machine-readable summary of a run (Table-1 numbers, paired test, diagnostics,
wall time per stage), with stable top-level keys so any tool can read it:

task, preset, methods.<base|wmpo|online_grpo|dpo|lifelong>.{successes, episodes, success_rate, ci95,
mean_success_length, vs_base_mcnemar}, wmpo_vs_base_mcnemar_p, outcome_agreement, reward_f1_policy,
imagined_vs_real_base.{imagined, real}, fidelity_at_48, wall_s.{<stage>, total}, wmpo_history,
disruption.{name, methods.<policy>} (`--disruptions`; null otherwise).
Values a run did not produce are null.
"""
from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def stage_seconds(out_dir: Path) -> dict[str, float]:
    """Wall seconds of every finished stage, from the stage markers, plus their total."""
    secs = {}
    for marker in sorted((Path(out_dir) / "stages").glob("*.json")):
        m = json.loads(marker.read_text())
        secs[m["stage"]] = float(m["seconds"])
    secs["total"] = sum(secs.values())
    return secs


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _disruption_summary(out: dict | None) -> dict | None:
    """{name, methods.<policy>.{success_rate, ci95, episodes, vs_nominal_mcnemar, vs_base_mcnemar}} (None: not run)."""
    if not out:
        return None
    return {"name": out.get("disruption"), "methods": {
        k: {"success_rate": r.get("success_rate"), "ci95": r.get("ci95"), "episodes": r.get("n"),
            "vs_nominal_mcnemar": r.get("vs_nominal_mcnemar"), "vs_base_mcnemar": r.get("vs_base_mcnemar")}
        for k, r in (out.get("results") or {}).items()}}


def result_summary(cfg: Any, outputs: dict[str, dict], out_dir: Path) -> dict[str, Any]:
    ev = outputs.get("evaluate", {})
    methods = {}
    for name, r in ev.items():
        eps = r.get("episodes") or []
        methods[name] = {"successes": int(sum(bool(e["success"]) for e in eps)), "episodes": len(eps),
                         "success_rate": r.get("success_rate"), "ci95": r.get("ci95"),
                         "mean_success_length": r.get("mean_success_length"), "vs_base_mcnemar": r.get("vs_base_mcnemar")}
    diag = outputs.get("diagnostics", {})
    fid = diag.get("fidelity", {}).get(f"{cfg.sampler_steps}_steps", {})
    closed = diag.get("closed_loop", {})
    return _clean({
        "task": cfg.task,
        "preset": cfg.preset,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_sha": _git_sha(),
        "real_budget": cfg.real_budget,
        "methods": methods,
        "wmpo_vs_base_mcnemar_p": (methods.get("wmpo", {}).get("vs_base_mcnemar") or {}).get("p"),
        "outcome_agreement": diag.get("outcome_agreement"),
        "reward_f1_policy": (diag.get("reward_on_heldout") or {}).get("f1"),
        "imagined_vs_real_base": {"imagined": closed.get("imagined_success_rate"), "real": closed.get("real_success_rate")},
        "fidelity_at_48": (fid.get("at") or {}).get("48"),
        "action_gap": ((diag.get("action_sensitivity") or {}).get("t0.7") or {}).get("action_gap"),
        "diagnostics": diag or None,
        "wall_s": stage_seconds(out_dir),
        "wmpo_history": outputs.get("wmpo", {}).get("history"),
        "distributed": outputs.get("wmpo", {}).get("distributed"),
        "disruption": _disruption_summary(outputs.get("disruptions")),
    })
