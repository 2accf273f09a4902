"""Lifelong learning and its comparisons (paper section 4.5, Fig. 6), as pipeline stages.

`lifelong`: from the WMPO policy, repeat N times: collect P real rollouts with the current policy ->
fine-tune the world model and the reward model on all real data so far -> WMPO -> evaluate
(wmpo.rl.lifelong holds the loop).

`lifelong_baselines`: the same real budget per round spent two other ways, evaluated on the same
evaluation states after every round:
- DPO rounds: round 1 is the DPO baseline (the base policy's P rollouts); each later round collects P
  real rollouts with the current DPO policy (G per training state, the same states as WMPO's rounds)
  and runs DPO on them with the current policy as the reference (iterative DPO on the newest round).
- BC on more expert demonstrations: the base recipe retrained from scratch on the demos plus k x P
  more scripted-expert demos (paper: 300, 428, 556 demos), k = 1 .. N+1, so every column of the
  table has used the same amount of data beyond the base demos.

Both are resumable per round (DIR/lifelong_baselines/rounds.json).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wmpo.data.groups import group_starts
from wmpo.dist import SINGLE
from wmpo.pipeline.context import Context
from wmpo.utils.checkpoint import save_json
from wmpo.utils.jsonable import jsonable


def _evaluate_policy(ctx: Context, policy, tok) -> dict:
    from wmpo.sim.evaluate import evaluate

    cfg = ctx.cfg
    res = evaluate(ctx.env_policy(policy, tok, None), cfg.task, split="eval", n=cfg.eval_episodes, num_workers=cfg.num_workers,
                   image_size=cfg.image_size, max_steps=cfg.max_episode_steps, show_progress=False)
    return {"success_rate": res.success_rate, "ci95": list(res.ci95), "mean_success_length": res.mean_success_length,
            "successes": int(sum(e.success for e in res.episodes)), "episodes": len(res.episodes)}


def stage_lifelong(ctx: Context) -> dict:
    """Lifelong WMPO (paper section 4.5)."""
    from wmpo.data.store import TrajectoryStore
    from wmpo.models.policy import save_policy
    from wmpo.rl.lifelong import LifelongConfig, LifelongStages, run_lifelong
    from wmpo.sim.collect import collect
    from wmpo.train.reward import train_reward
    from wmpo.train.world_model import train_world_model

    cfg = ctx.cfg
    root = ctx.out / "lifelong"
    policy, tok = ctx.load_policy(ctx.output("wmpo")["checkpoint"])
    G = cfg.grpo.group_size
    states, _ = ctx.initial_frames("train", cfg.num_initial_states)
    base_stores = [ctx.output("base_rollouts")["store"], ctx.output("demos")["store"]]
    prev_wm = [ctx.output("wm_finetune")["path"]]

    def collect_round(pol, budget: int, it: int) -> str:
        path = root / f"round{it}" / "rollouts.h5"
        init = group_starts(states, max(1, budget // G), G, offset=it)[:budget]
        with TrajectoryStore(path, "w") as store:
            collect(ctx.env_policy(pol, tok, cfg.grpo.temperature), cfg.task, store, init_states=init, num_workers=cfg.num_workers,
                    image_size=cfg.image_size, seed=cfg.seed + 30_000 + it, max_steps=cfg.max_episode_steps, show_progress=False)
        return path.relative_to(ctx.out).as_posix()  # lifelong.json keeps it: relative, so a moved run resumes

    def in_run(rounds: list[str]) -> list[str]:
        return [str(ctx.out / r) for r in rounds]  # (absolute paths of older runs stay as they are)

    def finetune_wm(rounds: list[str], it: int) -> str:
        res = train_world_model(cfg.wm_finetune, in_run(rounds) + base_stores, root / f"round{it}" / "wm", vae=ctx.output("vae")["path"],
                                init_from=prev_wm[-1], device=ctx.device)
        prev_wm.append(res["path"])
        return res["path"]

    def finetune_reward(rounds: list[str], it: int) -> str:
        return train_reward(cfg.reward_train, in_run(rounds) + base_stores, root / f"round{it}" / "reward",
                            device=ctx.device)["reward_path"]

    def run_round(pol, wm_path: str, reward_path: str, it: int) -> dict:
        hist = ctx.train_wmpo(pol, tok, wm_path, reward_path, root / f"round{it}" / "wmpo", tag=f"lifelong{it}", dist=SINGLE)
        return {"updates": len(hist), "imagined_success_rate": hist[-1]["imagined_success_rate"] if hist else 0.0}

    def evaluate_round(pol, it: int) -> dict:
        return _evaluate_policy(ctx, pol, tok)

    lcfg = LifelongConfig(iterations=cfg.lifelong_rounds, budget_per_iteration=cfg.real_budget, evaluate_base=False)
    records = run_lifelong(policy, LifelongStages(collect_round, finetune_wm, finetune_reward, run_round, evaluate_round), lcfg,
                           out_dir=root, logger=ctx.logger)
    final = root / "policy.pt"
    save_policy(final, policy, tok, cfg.policy_train.policy)
    return {"checkpoint": str(final), "records": jsonable(records)}


def stage_lifelong_baselines(ctx: Context) -> dict:
    """DPO rounds and BC on more expert demos, on the lifelong rounds' budgets (Fig. 6)."""
    from wmpo.data.batch import episodes_to_batch
    from wmpo.data.groups import groups_from_start_index
    from wmpo.data.loader import load_episodes
    from wmpo.data.store import TrajectoryStore
    from wmpo.models.policy import save_policy
    from wmpo.rl.dpo import DPOTrainer
    from wmpo.sim.collect import collect
    from wmpo.train.policy import train_policy

    cfg = ctx.cfg
    root = ctx.out / "lifelong_baselines"
    root.mkdir(parents=True, exist_ok=True)
    book = root / "rounds.json"
    done: dict[str, Any] = json.loads(book.read_text()) if book.is_file() else {"dpo": {}, "bc": {}}
    P, G, rounds = cfg.real_budget, cfg.grpo.group_size, cfg.lifelong_rounds + 1  # round 1 spends the first P
    states, _ = ctx.initial_frames("train", cfg.num_initial_states)

    def record(kind: str, k: int, rec: dict) -> None:
        done[kind][str(k)] = rec
        save_json(book, done)

    # DPO rounds: round 1 = the DPO baseline on the base policy's P rollouts
    dpo_ck = ctx.output("baselines")["dpo"]["checkpoint"] if cfg.baselines else None
    for k in range(1, rounds + 1):
        if str(k) in done["dpo"]:
            dpo_ck = done["dpo"][str(k)]["checkpoint"]
            continue
        if k > 1 or dpo_ck is None:  # round 1 is the baselines stage's DPO when there is one
            if k == 1:  # no baselines stage: the first round is run here the same way, on the base policy's P rollouts
                store, start = ctx.output("base_rollouts")["store"], ctx.output("policy_sft")["policy_path"]
            else:
                start = dpo_ck
                pol, tok = ctx.load_policy(start)
                store = root / f"dpo_round{k}" / "rollouts.h5"
                init = group_starts(states, max(1, P // G), G, offset=k - 1)[:P]
                with TrajectoryStore(store, "w") as st:
                    collect(ctx.env_policy(pol, tok, cfg.grpo.temperature), cfg.task, st, init_states=init,
                            num_workers=cfg.num_workers, image_size=cfg.image_size, seed=cfg.seed + 40_000 + k,
                            max_steps=cfg.max_episode_steps, show_progress=False)
            policy, tok = ctx.load_policy(start)
            ref, _ = ctx.load_policy(start)
            eps, _ = load_episodes(str(store))
            batch = episodes_to_batch(eps, tok, policy, groups_from_start_index(eps, G))
            DPOTrainer(policy, cfg.dpo, reference=ref).fit(batch)
            dpo_ck = str(root / f"dpo_round{k}" / "policy.pt")
            Path(dpo_ck).parent.mkdir(parents=True, exist_ok=True)
            save_policy(dpo_ck, policy, tok, cfg.policy_train.policy)
        policy, tok = ctx.load_policy(dpo_ck)
        record("dpo", k, {"checkpoint": dpo_ck, "real_rollouts": k * P, **_evaluate_policy(ctx, policy, tok)})

    # BC on the demos + k x P more expert demos, from scratch with the base recipe
    todo = [k for k in range(1, rounds + 1) if str(k) not in done["bc"]]
    stores = [root / f"expert_more{k}.h5" for k in range(1, rounds + 1)]
    for k in range(1, max(todo, default=0) + 1):  # the increments the remaining rounds train on (regenerated if gone)
        if not stores[k - 1].is_file():
            with TrajectoryStore(stores[k - 1], "w") as st:
                collect("expert", cfg.task, st, n_episodes=P, seed=cfg.seed + 10_000 + cfg.num_demos + (k - 1) * P,
                        num_workers=cfg.num_workers, image_size=cfg.image_size, show_progress=False)
    for k in todo:
        res = train_policy(cfg.policy_train, [ctx.output("demos")["store"], *map(str, stores[:k])], root / f"bc_plus{k}",
                           device=ctx.device)
        policy, tok = ctx.load_policy(res["policy_path"])
        record("bc", k, {"checkpoint": res["policy_path"], "demos": cfg.num_demos + k * P, **_evaluate_policy(ctx, policy, tok)})
    return {"rounds": rounds, "budget_per_round": P, "dpo": jsonable(done["dpo"]), "bc": jsonable(done["bc"])}


def report_lines(outs: dict, cfg: Any) -> list[str]:
    """The report's Fig.-6 section: success after each round of P real rollouts, per method."""
    lb = outs.get("lifelong_baselines")
    life = outs.get("lifelong")
    if not lb and not life:
        return []
    ev = outs.get("evaluate", {})

    def cell(r: dict | None) -> str:
        if not r or r.get("success_rate") is None:
            return "-"
        ci = r.get("ci95") or [None, None]
        s = f"{100 * r['success_rate']:.1f}"
        return s + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci[0] is not None else "")

    wmpo_rows: dict[int, dict] = {1: ev.get("wmpo")} if ev.get("wmpo") else {}
    for rec in (life or {}).get("records", []):
        it = rec.get("iteration")
        if isinstance(it, int) and it >= 1:
            wmpo_rows[it + 1] = rec.get("eval") or rec.get("evaluate") or rec
    dpo = {int(k): v for k, v in (lb or {}).get("dpo", {}).items()}
    bc = {int(k): v for k, v in (lb or {}).get("bc", {}).items()}
    n = max([*wmpo_rows, *dpo, *bc, 0])
    lines = ["", "## Lifelong learning (paper Fig. 6)", "",
             f"Each round spends P = {cfg.real_budget} more real trajectories: WMPO (collect with the current policy, fine-tune "
             f"the world and reward models, WMPO), DPO (collect with the current DPO policy, DPO on them), or BC retrained on "
             f"P more expert demonstrations. Success rate (%) [95% CI] on the {cfg.eval_episodes} evaluation states.", "",
             "| round | extra real data | WMPO | DPO | BC (demos) |", "|---|---|---|---|---|",
             f"| 0 | 0 | {cell(ev.get('base'))} | {cell(ev.get('base'))} | {cell(ev.get('base'))} ({cfg.num_demos}) |"]
    for k in range(1, n + 1):
        b = bc.get(k)
        demos = f" ({b['demos']})" if b and "demos" in b else ""
        lines.append(f"| {k} | {k} x P | {cell(wmpo_rows.get(k))} | {cell(dpo.get(k))} | {cell(b)}{demos} |")
    return lines
