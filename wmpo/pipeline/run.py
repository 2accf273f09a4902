"""The whole WMPO pipeline (README command 1), resumable stage by stage: each stage calls the library.

expert demos -> policy SFT -> [corpus] -> VAE -> world-model pretraining -> P real rollouts of the
base policy -> [held-out rollouts] -> world-model fine-tuning -> reward model -> WMPO (GRPO in imagination) -> [baselines: online
GRPO, DPO on the same budget P] -> evaluation on the evaluation initial states -> report.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.config import RunConfig
from wmpo.data.groups import group_starts
from wmpo.dist import SINGLE, DistContext
from wmpo.pipeline.context import Context
from wmpo.pipeline.run_config import check_or_write_config, config_changes  # noqa: F401 (config_changes re-exported)
from wmpo.pipeline.distill_stage import stage_distill_wm
from wmpo.pipeline.stages import Stage, StageRunner
from wmpo.utils.checkpoint import save_json
from wmpo.utils.device import seed_everything
from wmpo.utils.jsonable import jsonable as _jsonable


# ----------------------------------------------------------------------------------------------
# stages


def stage_demos(ctx: Context) -> dict:
    from wmpo.data.store import TrajectoryStore
    from wmpo.sim.collect import collect

    cfg = ctx.cfg
    path = ctx.path("data", "demos.h5")
    with TrajectoryStore(path, "w") as store:
        res = collect("expert", cfg.task, store, n_episodes=cfg.num_demos, seed=cfg.seed + 10_000,
                      num_workers=cfg.num_workers, image_size=cfg.image_size)
        n, n_succ = len(store), sum(bool(store.load(i).success) for i in range(len(store)))
    return {"store": str(path), "episodes": n, "expert_success_rate": n_succ / max(n, 1), "collect": _jsonable(res)}


def _corpus_dir(ctx: Context) -> Path:
    return Path(ctx.cfg.corpus_dir) if ctx.cfg.corpus_dir else ctx.out / "corpus"


def stage_corpus(ctx: Context) -> dict:
    """The world-model pretraining corpus (perturbed scripted experts of several tasks; not part of
    the real budget P). Resumable; a corpus folder shared between runs is topped up, never redone."""
    from wmpo.sim.corpus import CorpusConfig, collect_corpus, corpus_store_path

    from wmpo.sim.corpus import corpus_counts

    cfg = ctx.cfg
    folder = _corpus_dir(ctx)
    ccfg = CorpusConfig(tasks=tuple(cfg.corpus_tasks), episodes_per_task=cfg.corpus_episodes_per_task, image_size=cfg.image_size,
                        max_steps=cfg.max_episode_steps)
    if ctx.corpus_as_is:  # streamed pretraining: the corpus folder holds this machine's slice, used as it is
        counts = corpus_counts(folder, ccfg.tasks)
        if not any(c["episodes"] for c in counts.values()):
            raise ValueError(f"corpus: {folder} holds no episodes of {list(ccfg.tasks)} (--corpus-as-is uses the folder as it "
                             f"is; fill it with `wmpo corpus --out {folder}` first)")
    else:
        counts = collect_corpus(folder, ccfg, num_workers=cfg.num_workers)
    stores = [str(corpus_store_path(folder, t)) for t in ccfg.tasks if counts[t]["episodes"] > 0]
    return {"folder": str(folder), "stores": stores, "counts": counts, "as_is": bool(ctx.corpus_as_is),
            "episodes": sum(c["episodes"] for c in counts.values()), "successes": sum(c["successes"] for c in counts.values())}


def _pretrain_stores(ctx: Context) -> list[str]:
    """What the VAE and the world model are pretrained on: the demos, plus the corpus when there is one."""
    stores = [ctx.output("demos")["store"]]
    if ctx.cfg.corpus_episodes_per_task > 0:
        stores += ctx.output("corpus")["stores"]
    return stores


def stage_vae(ctx: Context) -> dict:
    from wmpo.train.vae import train_vae

    res = train_vae(ctx.cfg.vae_train, _pretrain_stores(ctx), ctx.out / "vae", device=ctx.device)
    return _jsonable(res)


def stage_wm_pretrain(ctx: Context) -> dict:
    from wmpo.train.world_model import train_world_model

    res = train_world_model(ctx.cfg.wm_pretrain, _pretrain_stores(ctx), ctx.out / "wm_pretrain",
                            vae=ctx.output("vae")["path"], device=ctx.device)
    return _jsonable(res)


def stage_policy_sft(ctx: Context) -> dict:
    from wmpo.train.policy import train_policy

    res = train_policy(ctx.cfg.policy_train, [ctx.output("demos")["store"]], ctx.out / "policy_base", device=ctx.device)
    return _jsonable(res)


def stage_base_rollouts(ctx: Context) -> dict:
    """P real rollouts of the base policy (temperature sampling), in groups of G per initial state."""
    from wmpo.data.store import TrajectoryStore
    from wmpo.sim.collect import collect

    cfg = ctx.cfg
    policy, tok = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
    G = cfg.grpo.group_size
    states, _ = ctx.initial_frames("train", cfg.num_initial_states)
    init = group_starts(states, max(1, cfg.real_budget // G), G)[: cfg.real_budget]
    path = ctx.path("data", "base_rollouts.h5")
    with TrajectoryStore(path, "w") as store:
        collect(ctx.env_policy(policy, tok, cfg.grpo.temperature), cfg.task, store, init_states=init,
                num_workers=cfg.num_workers, image_size=cfg.image_size, seed=cfg.seed + 20_000, max_steps=cfg.max_episode_steps)
        eps = [store.load(i) for i in range(len(store))]
    from wmpo.data.groups import groups_from_start_index

    succ = [bool(ep.success) for ep in eps]
    groups = groups_from_start_index(eps, G)  # store order is finishing order, not start order
    return {"store": str(path), "episodes": len(succ), "success_rate": float(np.mean(succ)) if succ else 0.0, "groups": groups}


def stage_heldout(ctx: Context) -> dict:
    """Real base-policy rollouts that no model trains on (for the diagnostics): one per training
    initial state after the P budget's states, at GRPO's temperature."""
    from wmpo.data.store import TrajectoryStore
    from wmpo.sim.collect import collect

    cfg = ctx.cfg
    policy, tok = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
    first = max(1, cfg.real_budget // cfg.grpo.group_size)
    states, _ = ctx.initial_frames("train", first + cfg.heldout_episodes)
    path = ctx.path("data", "heldout_rollouts.h5")
    with TrajectoryStore(path, "w") as store:
        collect(ctx.env_policy(policy, tok, cfg.grpo.temperature), cfg.task, store, init_states=states[first:],
                num_workers=cfg.num_workers, image_size=cfg.image_size, seed=cfg.seed + 25_000, max_steps=cfg.max_episode_steps)
        succ = [bool(store.load(i).success) for i in range(len(store))]
    return {"store": str(path), "episodes": len(succ), "success_rate": float(np.mean(succ)) if succ else 0.0,
            "first_state": first}


def stage_diagnostics(ctx: Context) -> dict:
    """World-model fidelity, outcome agreement, reward F1 and closed-loop agreement on the held-out
    real base-policy episodes (wmpo.pipeline.diagnostics), before WMPO trusts the learned simulator."""
    from wmpo.data.loader import load_episodes
    from wmpo.models.reward import load_reward
    from wmpo.models.world_model import WorldModel
    from wmpo.pipeline import diagnostics as dg
    from wmpo.pipeline.videos import write_side_by_side
    from wmpo.sim import TASKS
    from wmpo.utils.frames import uint8_to_model

    cfg = ctx.cfg
    eps, _ = load_episodes(ctx.output("heldout")["store"])
    vae = ctx.load_vae()
    wm_path = ctx.output("wm_finetune")["path"]
    wm = WorldModel.from_checkpoint(wm_path).to(ctx.device).eval()
    stats = wm.action_stats  # the statistics the world model was trained with (saved in its checkpoint)
    if stats is None:
        raise ValueError(f"wm_finetune: {wm_path} holds no action statistics (q01/q99); retrain it with this train-wm")
    reward = load_reward(ctx.output("reward")["reward_path"], ctx.device)
    out: dict[str, Any] = {"episodes": len(eps), "real_success_rate": float(np.mean([e.success for e in eps]))}
    fidelity = {}
    for steps in dict.fromkeys([cfg.sampler_steps, *cfg.diagnostic_sampler_steps]):
        r = dg.open_loop_fidelity(vae, wm, eps, stats, steps=steps, device=ctx.device, seed=cfg.seed)
        frames = r.pop("frames")
        r["outcome"] = dg.outcome_agreement(reward, frames, r["lengths"], [e.success for e in eps], ctx.device)
        fidelity[f"{steps}_steps"] = r
        if steps == cfg.sampler_steps:
            for b in range(min(cfg.num_videos, len(eps))):
                T = len(eps[b])
                write_side_by_side(ctx.path("videos", "heldout_replay", f"episode_{b:03d}.mp4"), eps[b].frames, frames[b, : T + 1])
    if cfg.distill_wm:  # the few-step student on the same episodes (docs/fewstep.md)
        student = WorldModel.from_checkpoint(ctx.output("distill_wm")["path"]).to(ctx.device).eval()
        r = dg.open_loop_fidelity(vae, student, eps, stats, steps=cfg.student_steps, device=ctx.device, seed=cfg.seed)
        r["outcome"] = dg.outcome_agreement(reward, r.pop("frames"), r["lengths"], [e.success for e in eps], ctx.device)
        fidelity[f"student_{cfg.student_steps}_steps"] = r
    dg.write_fidelity_plot(fidelity, ctx.path("diagnostics", "fidelity.png"))
    out["fidelity"] = fidelity
    main_key = f"{cfg.sampler_steps}_steps"
    out["outcome_agreement"] = fidelity[main_key]["outcome"]["agreement"]
    out["reward_on_heldout"] = dg.reward_on_real(reward, eps, ctx.device)
    out["action_sensitivity"] = dg.action_sensitivity(vae, wm, eps, stats, device=ctx.device, seed=cfg.seed)
    # closed loop: the base policy in the world model from the held-out episodes' initial states
    policy, tok = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
    engine = ctx.imagination_engine(policy, tok, wm_path, ctx.output("reward")["reward_path"])
    pool = uint8_to_model(torch.as_tensor(np.stack([e.frames[0] for e in eps]))).to(ctx.device)
    spec = TASKS[cfg.task]
    batch, _ = engine.sample_groups(pool, spec.instruction, group_size=1, num_trajectories=len(eps), temperature=cfg.grpo.temperature,
                                    max_steps=cfg.imagined_horizon or spec.horizon, dynamic_sampling=False, seed=cfg.seed + 77)
    out["closed_loop"] = {"imagined_success_rate": float(batch.success.float().mean()), "real_success_rate": out["real_success_rate"],
                          "trajectories": len(batch)}
    save_json(ctx.path("diagnostics", "diagnostics.json"), _jsonable(out))
    return _jsonable(out)


def stage_wm_finetune(ctx: Context) -> dict:
    from wmpo.train.world_model import train_world_model

    stores = [ctx.output("base_rollouts")["store"], ctx.output("demos")["store"]]
    res = train_world_model(ctx.cfg.wm_finetune, stores, ctx.out / "wm_finetune", vae=ctx.output("vae")["path"],
                            init_from=ctx.output("wm_pretrain")["path"], device=ctx.device)
    return _jsonable(res)


def stage_reward(ctx: Context) -> dict:
    from wmpo.train.reward import train_reward

    stores = [ctx.output("base_rollouts")["store"], ctx.output("demos")["store"]]
    res = train_reward(ctx.cfg.reward_train, stores, ctx.out / "reward", device=ctx.device)
    return _jsonable(res)


def _real_eval_base(ctx: Context) -> dict | None:
    """The start of WMPO's real-check curve: the base policy, greedy, on the same held-out training states
    as the curve's every-few-iterations points (once; kept in policy_wmpo/real_eval_base.json). None: no curve."""
    if not ctx.has_real_eval_curve:  # checked before loading the base policy, which the curve needs
        return None
    path = ctx.out / "policy_wmpo" / "real_eval_base.json"
    if ctx.dist.broadcast_object(path.is_file()):
        return json.loads(path.read_text())
    policy, tok = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
    res = {k: float(v) for k, v in ctx.real_eval_curve(tok, ctx.dist)(policy.eval()).items()}
    if ctx.dist.is_main:
        save_json(path, res)
    return res


def stage_wmpo(ctx: Context) -> dict:
    """WMPO from the base policy with the fine-tuned world model and the reward model."""
    from wmpo.models.policy import save_policy

    cfg = ctx.cfg
    policy, tok = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
    wm_path, steps = ctx.imagination_world_model()  # the few-step student with distill_wm
    history = ctx.train_wmpo(policy, tok, wm_path, ctx.output("reward")["reward_path"], ctx.out / "policy_wmpo", steps=steps)
    final = ctx.path("policy_wmpo", "policy.pt")
    if ctx.dist.is_main:  # every rank holds the same policy; rank 0 writes it
        save_policy(final, policy, tok, cfg.policy_train.policy)
        save_json(ctx.path("policy_wmpo", "history.json"), history)
    return {"checkpoint": str(final), "iterations": len(history), "history": history, "real_eval_base": _real_eval_base(ctx),
            "distributed": {**ctx.dist.describe(), "strategy": ctx.strategy if ctx.dist.enabled else "single process"}}


def _online_splits(ocfg: Any, world_size: int) -> bool:
    """Whether online GRPO can spread over `world_size` ranks: whole groups and mini-batch shares on every
    rank (wmpo.rl.distributed.local_grpo_config), an initial state and a group of the budget per rank."""
    g = ocfg.grpo
    return (world_size > 1 and (g.batch_size // g.group_size) % world_size == 0 and g.minibatch_size % world_size == 0
            and ocfg.num_initial_states >= world_size and ocfg.budget >= g.group_size * world_size)


def stage_baselines(ctx: Context) -> dict:
    """Online GRPO in the real simulator and offline DPO, on the same real-rollout budget P. Under torchrun
    online GRPO runs on every rank (each simulates its share of the groups; docs/distributed.md); DPO and
    every file are rank 0's."""
    from wmpo.data.batch import episodes_to_batch
    from wmpo.data.loader import load_episodes
    from wmpo.models.policy import save_policy
    from wmpo.data.groups import groups_from_start_index
    from wmpo.rl.dpo import DPOTrainer
    from wmpo.rl.online import run_online_grpo, tokenizer_decoder
    from wmpo.sim import TASKS

    cfg = ctx.cfg
    spec = TASKS[cfg.task]
    out: dict[str, Any] = {}
    # online GRPO: on every rank when its batch splits over them, else on rank 0 alone
    ocfg = copy.deepcopy(cfg.online)
    spread = _online_splits(ocfg, ctx.dist.world_size)
    if ctx.dist.enabled and not spread and ctx.dist.is_main:
        g = ocfg.grpo
        print(f"online GRPO runs on rank 0 alone: B = {g.batch_size} (G = {g.group_size}), M = {g.minibatch_size}, budget "
              f"{ocfg.budget} and {ocfg.num_initial_states} initial states do not split into whole groups on {ctx.dist.world_size} ranks")
    dist = ctx.dist if spread else SINGLE
    if spread or ctx.dist.is_main:
        policy, tok = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
        summary = run_online_grpo(policy, cfg.task, ocfg, tokenizer_decoder(tok), spec.instruction,
                                  horizon=cfg.max_episode_steps or spec.horizon, logger=ctx.logger, dist=dist,
                                  strategy=ctx.strategy if spread else "ddp", state_path=ctx.path("baselines", "online_grpo_state.pt"))
    if not ctx.dist.is_main:
        return {}  # rank 0 writes the policies and the marker
    p = ctx.path("baselines", "online_grpo.pt")
    save_policy(p, policy, tok, cfg.policy_train.policy)
    out["online_grpo"] = {"checkpoint": str(p), "summary": _jsonable(summary), "world_size": dist.world_size}
    # DPO on the base policy's P real rollouts
    policy, tok = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
    ref, _ = ctx.load_policy(ctx.output("policy_sft")["policy_path"])
    eps, _ = load_episodes(ctx.output("base_rollouts")["store"])
    batch = episodes_to_batch(eps, tok, policy, groups_from_start_index(eps, cfg.grpo.group_size))
    hist = DPOTrainer(policy, cfg.dpo, reference=ref).fit(batch)
    p = ctx.path("baselines", "dpo.pt")
    save_policy(p, policy, tok, cfg.policy_train.policy)
    out["dpo"] = {"checkpoint": str(p), "steps": len(hist), "final": hist[-1] if hist else {}}
    return out


def stage_evaluate(ctx: Context) -> dict:
    """Every policy on the evaluation initial states; under torchrun each rank runs a share of the episodes."""
    from wmpo.sim.evaluate_ranks import evaluate_across_ranks

    cfg = ctx.cfg
    policies = {"base": ctx.output("policy_sft")["policy_path"], "wmpo": ctx.output("wmpo")["checkpoint"]}
    if cfg.lifelong_rounds > 0:
        policies["lifelong"] = ctx.output("lifelong")["checkpoint"]
    if cfg.baselines:
        policies["online_grpo"] = ctx.output("baselines")["online_grpo"]["checkpoint"]
        policies["dpo"] = ctx.output("baselines")["dpo"]["checkpoint"]
    from wmpo.sim.evaluate import EpisodeResult, EvalResult

    results, evals = {}, {}
    for name, ck in policies.items():
        done = ctx.out / "eval" / f"{name}.json"  # per-policy resume: a long evaluation killed midway keeps what finished
        if ctx.dist.broadcast_object(done.is_file()):
            d = json.loads(done.read_text())
            evals[name] = EvalResult(**{**d, "ci95": tuple(d["ci95"]), "episodes": [EpisodeResult(**e) for e in d["episodes"]]})
            results[name] = d
            continue
        policy, tok = ctx.load_policy(ck)
        res = evaluate_across_ranks(ctx.env_policy(policy, tok, None), cfg.task, ctx.dist, split="eval", n=cfg.eval_episodes,
                                    num_workers=cfg.num_workers, image_size=cfg.image_size, n_videos=cfg.num_videos,
                                    video_dir=str(ctx.out / "videos" / f"real_{name}"), max_steps=cfg.max_episode_steps)
        results[name] = _jsonable(res)
        evals[name] = res
        if ctx.dist.is_main:
            save_json(ctx.path("eval", f"{name}.json"), results[name])
    # paired comparison with the base policy on the same evaluation states (exact McNemar test)
    from wmpo.sim.evaluate import mcnemar_exact, paired_outcomes

    for name in results:
        if name != "base":
            results[name]["vs_base_mcnemar"] = mcnemar_exact(*paired_outcomes(evals["base"], evals[name]))
    if ctx.dist.is_main:
        save_json(ctx.path("eval", "results.json"), results)
    return results


def stage_videos(ctx: Context) -> dict:
    """mp4s of imagined vs real rollouts of the WMPO policy from the same initial states."""
    from wmpo.pipeline.videos import imagined_vs_real

    return imagined_vs_real(ctx)


def stage_report(ctx: Context) -> dict:
    from wmpo.pipeline.report import write_report
    from wmpo.pipeline.results import result_summary

    save_json(ctx.out / "result.json", result_summary(ctx.cfg, ctx.runner.outputs, ctx.out))
    return {"report": str(write_report(ctx)), "result": str(ctx.out / "result.json")}


def build_stages(cfg: RunConfig, corpus_as_is: bool = False, disruptions: bool = False) -> list[Stage]:
    """The stages in order. Data stages are regenerable (rerun from their seeds when a run folder kept
    without its data resumes on another machine); with `corpus_as_is` the corpus stage is live (it
    records what the corpus folder holds at each invocation: pretraining streamed over machines)."""
    from wmpo.pipeline.disruptions import stage_disruptions
    from wmpo.pipeline.lifelong import stage_lifelong, stage_lifelong_baselines

    # the base policy first (it needs neither the corpus nor the world model); the real rollouts of the
    # base policy (data, not kept when a run moves between machines) right before the stages that train on them
    return [
        Stage("demos", stage_demos, regenerable=True),
        Stage("policy_sft", stage_policy_sft),
        Stage("corpus", stage_corpus, enabled=cfg.corpus_episodes_per_task > 0, regenerable=True, live=corpus_as_is),
        Stage("vae", stage_vae),
        Stage("wm_pretrain", stage_wm_pretrain),
        Stage("base_rollouts", stage_base_rollouts, regenerable=True),
        Stage("heldout", stage_heldout, enabled=cfg.heldout_episodes > 0, regenerable=True),
        Stage("wm_finetune", stage_wm_finetune),
        Stage("distill_wm", stage_distill_wm, enabled=cfg.distill_wm),
        Stage("reward", stage_reward),
        Stage("diagnostics", stage_diagnostics, enabled=cfg.heldout_episodes > 0),
        Stage("wmpo", stage_wmpo, distributed=True),
        Stage("baselines", stage_baselines, enabled=cfg.baselines, distributed=True),
        Stage("lifelong", stage_lifelong, enabled=cfg.lifelong_rounds > 0),
        Stage("lifelong_baselines", stage_lifelong_baselines, enabled=cfg.lifelong_rounds > 0),
        Stage("evaluate", stage_evaluate, distributed=True),
        Stage("disruptions", stage_disruptions, enabled=disruptions),
        Stage("videos", stage_videos),
        Stage("report", stage_report),
    ]


def run_pipeline(cfg: RunConfig, out_dir: str | Path, stop_after: str | None = None, upgrade_config: bool = False,
                 corpus_as_is: bool = False, disruptions: bool = False, dist: DistContext = SINGLE,
                 strategy: str = "ddp") -> dict[str, dict]:
    """Run (or resume) the pipeline into out_dir. The resolved config is saved as out_dir/config.json;
    resuming with a different config is refused (start a new out_dir instead). `upgrade_config`: a run
    written by an older wmpo whose config lacks fields the code has added since (and differs in
    nothing else) resumes with them recorded; a changed value is still refused. `corpus_as_is`: the
    corpus folder is used as it is (nothing collected; the world model pretrains, or keeps
    pretraining after a resume, on whatever slice it holds now). `disruptions`: also evaluate every
    policy on the task's disruption (an evaluation, not part of the config: a finished run gains the
    section by rerunning with it; the report is rewritten). dist / strategy: under torchrun
    (wmpo.dist.init_distributed) rank 0 runs the single-process stages and writes every file; WMPO, the
    online GRPO baseline and evaluation run on all ranks (docs/distributed.md)."""
    from wmpo.sim.tasks import get_task
    from wmpo.utils.arg_checks import check_output_dir

    # bad input fails here, before anything is written
    get_task(cfg.task)
    for name in ("seed", "lifelong_rounds"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}: expected >= 0, got {getattr(cfg, name)}")
    out = check_output_dir(out_dir, "out")
    from wmpo.rl.distributed import STRATEGIES

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if strategy == "deepspeed":
        from wmpo.rl.deepspeed_strategy import check_deepspeed
        from wmpo.utils.device import default_device

        check_deepspeed(default_device(), dist)  # refused before anything is written when it cannot run here
    if stop_after is not None:
        names = [s.name for s in build_stages(cfg, corpus_as_is, disruptions=True)]
        if stop_after not in names:
            raise ValueError(f"stop_after: expected one of {names}, got {stop_after!r}")
    error = check_or_write_config(cfg, out, upgrade_config) if dist.is_main else None
    error = dist.broadcast_object(error)  # rank 0 alone reads and writes config.json; every rank fails alike
    if error is not None:
        raise ValueError(error)
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, dist.local_world_size)))  # ranks share the node's cores
    runner = StageRunner(out, dist=dist)
    ctx = Context(cfg, out, runner, dist=dist, strategy=strategy)
    ctx.corpus_as_is = corpus_as_is
    # the corpus is read as it is only while something still pretrains on it; after that its marker stands
    # an earlier --disruptions result stays in the report; a new one rewrites the report
    stages = build_stages(cfg, corpus_as_is and not runner.is_done("wm_pretrain"),
                          disruptions=disruptions or runner.is_done("disruptions"))
    if disruptions and not runner.is_done("disruptions") and dist.is_main:
        runner.marker("report").unlink(missing_ok=True)
    if stop_after is not None:
        names = [s.name for s in stages]
        stages = stages[: names.index(stop_after) + 1]
    try:
        return runner.run(stages, ctx)
    finally:
        ctx.logger.close()
