"""`wmpo run --disruptions`: every policy of the run evaluated on its task's disruption (the paper's
Table 2), from the same evaluation initial states as the nominal evaluation, and the report section.

Each policy's disrupted result is kept in OUT/eval/disrupted_<policy>.json (a killed stage resumes
per policy). A task without a disruption (coffee) records that and the report says so.
"""
from __future__ import annotations

import json
from typing import Any

from wmpo.utils.checkpoint import save_json
from wmpo.utils.jsonable import jsonable

LABELS = {"base": "Base policy (SFT)", "online_grpo": "Online GRPO (real env)", "dpo": "DPO (offline)", "wmpo": "WMPO (ours)",
          "lifelong": "Lifelong WMPO (ours)"}
ORDER = ("base", "online_grpo", "dpo", "wmpo", "lifelong")


def task_disruption(task: str) -> str | None:
    """The disruption defined for `task` (wmpo.sim.tasks.DISRUPTIONS), None when it has none."""
    from wmpo.sim.tasks import DISRUPTIONS

    names = [d for d, t in DISRUPTIONS.items() if t == task]
    return names[0] if names else None


def _eval_result(d: dict):
    from wmpo.sim.evaluate import EpisodeResult, EvalResult

    return EvalResult(**{**d, "ci95": tuple(d["ci95"]), "episodes": [EpisodeResult(**e) for e in d["episodes"]]})


def stage_disruptions(ctx: Any) -> dict:
    """Every policy the evaluate stage evaluated, again on the task's disruption (same states, greedy)."""
    from wmpo.sim.evaluate import evaluate, mcnemar_exact, paired_outcomes
    from wmpo.sim.tasks import DISRUPTIONS

    cfg = ctx.cfg
    name = task_disruption(cfg.task)
    if name is None:
        print(f"disruptions: task {cfg.task!r} has no disruption scenario "
              f"(defined: {', '.join(f'{d} for {t}' for d, t in DISRUPTIONS.items())}); nothing to evaluate", flush=True)
        return {"task": cfg.task, "disruption": None, "results": {}}
    nominal = ctx.output("evaluate")
    policies = {"base": ctx.output("policy_sft")["policy_path"], "wmpo": ctx.output("wmpo")["checkpoint"]}
    if "lifelong" in nominal:
        policies["lifelong"] = ctx.output("lifelong")["checkpoint"]
    if "online_grpo" in nominal:
        policies["online_grpo"] = ctx.output("baselines")["online_grpo"]["checkpoint"]
        policies["dpo"] = ctx.output("baselines")["dpo"]["checkpoint"]
    results, evals = {}, {}
    for pol, ck in policies.items():
        done = ctx.out / "eval" / f"disrupted_{pol}.json"
        if done.is_file():
            results[pol] = json.loads(done.read_text())
            evals[pol] = _eval_result(results[pol])
            continue
        policy, tok = ctx.load_policy(ck)
        res = evaluate(ctx.env_policy(policy, tok, None), cfg.task, split="eval", n=cfg.eval_episodes, num_workers=cfg.num_workers,
                       image_size=cfg.image_size, video_dir=str(ctx.out / "videos" / f"disrupted_{pol}"), n_videos=cfg.num_videos,
                       max_steps=cfg.max_episode_steps, disruption=name)
        results[pol] = jsonable(res)
        evals[pol] = res
        save_json(ctx.path("eval", f"disrupted_{pol}.json"), results[pol])
    for pol in results:
        nom = _eval_result({k: v for k, v in nominal[pol].items() if k != "vs_base_mcnemar"})
        # same evaluation states, nominal vs disrupted: how much the disruption cost this policy
        results[pol]["vs_nominal_mcnemar"] = mcnemar_exact(*paired_outcomes(nom, evals[pol]))
        if pol != "base":
            results[pol]["vs_base_mcnemar"] = mcnemar_exact(*paired_outcomes(evals["base"], evals[pol]))
    save_json(ctx.path("eval", "disrupted_results.json"), results)
    return {"task": cfg.task, "disruption": name, "results": results}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(r: dict) -> str:
    ci = r.get("ci95")
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "-"


def _mc(m: dict | None) -> str:
    return f"{m['p']:.3g} ({m['n01']} / {m['n10']})" if m else "-"


def disruption_report_lines(out: dict | None, nominal: dict) -> list[str]:
    """The report's Table-2-style section (nothing when the run was not asked for disruptions)."""
    if not out:
        return []
    lines = ["", "## Disruptions (paper Table 2)", ""]
    if out.get("disruption") is None:
        return lines + [f"Task `{out.get('task')}` has no disruption scenario (the paper's Table 2 covers `position` on square, "
                        f"`background` on stack_three and `texture` on three_piece_assembly); nothing evaluated."]
    res = out["results"]
    n = next(iter(res.values()), {}).get("n", "-")
    lines += [f"Disruption `{out['disruption']}` of task `{out['task']}` (docs/sim.md), evaluated from the same {n} evaluation "
              "initial states as the table above, greedy actions.", "",
              "| method | nominal success (%) | disrupted success (%) | 95% CI (disrupted) | change (points) | "
              "nominal vs disrupted: McNemar p (n01 / n10) | disrupted, vs base: McNemar p (n01 / n10) |",
              "|---|---|---|---|---|---|---|"]
    for pol in ORDER:
        if pol not in res:
            continue
        r, nom = res[pol], nominal.get(pol, {}).get("success_rate")
        d = r.get("success_rate")
        change = "-" if nom is None or d is None else f"{100 * (d - nom):+.1f}"
        lines.append(f"| {LABELS[pol]} | {_pct(nom)} | {_pct(d)} | {_ci(r)} | {change} | {_mc(r.get('vs_nominal_mcnemar'))} | "
                     f"{_mc(r.get('vs_base_mcnemar'))} |")
    lines += ["", "n01 (nominal vs disrupted): states solved only under the disruption; n10: solved only in the nominal task."]
    return lines
