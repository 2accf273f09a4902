"""The whole WMPO pipeline (README command 1), resumable stage by stage.

expert demos -> VAE -> world-model pretraining -> policy SFT -> P real rollouts of the base policy
-> world-model fine-tuning -> reward model -> WMPO (GRPO in imagination) -> [baselines: online
GRPO, DPO on the same budget P] -> evaluation on the evaluation initial states -> report.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.config import RunConfig
from wmpo.pipeline.stages import Stage, StageRunner
from wmpo.data.batch import TrajectoryBatch
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint, save_json
from wmpo.utils.device import default_device, seed_everything
from wmpo.utils.logging import ScalarLogger, progress


class Context:
    """What the stages share: the config, the output folders, the device, the logger."""

    def __init__(self, cfg: RunConfig, out_dir: Path, runner: StageRunner):
        self.cfg = cfg
        self.out = out_dir
        self.runner = runner
        self.device = default_device()
        self.logger = ScalarLogger(out_dir / "tb")

    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def output(self, stage: str) -> dict:
        return self.runner.outputs[stage]


# ----------------------------------------------------------------------------------------------
# loading helpers


def _episodes(paths: list[str]) -> list:
    from wmpo.data.store import TrajectoryStore

    eps = []
    for p in paths:
        with TrajectoryStore(p, "r") as st:
            eps.extend(st.load(i) for i in range(len(st)))
    return eps


def _load_policy(ctx: Context, path: str):
    from wmpo.models.policy import load_policy

    return load_policy(path, ctx.device)


def _load_vae(ctx: Context):
    from wmpo.models.vae import FrameVAE

    return FrameVAE.from_checkpoint(ctx.output("vae")["path"]).to(ctx.device).eval()


def _world_model_env(ctx: Context, wm_path: str):
    """The batched world-model environment of the run's VAE and the world model at `wm_path`."""
    from wmpo.models.world_model import WorldModel
    from wmpo.rollout.world_model_env import WorldModelEnv

    cfg = ctx.cfg
    wm = WorldModel.from_checkpoint(wm_path).to(ctx.device).eval()
    return WorldModelEnv(_load_vae(ctx), wm, steps=cfg.sampler_steps, num_context=cfg.world_model.num_context,
                         t_context=cfg.world_model.t_context, device=ctx.device)


def _initial_frames(ctx: Context, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(states [n, S], first frames uint8 [n, H, W, 3]) of the task's `split` initial states, cached."""
    from wmpo.sim import make_env
    from wmpo.sim.initial_states import get_initial_states

    cache = ctx.path("data", f"initial_{split}_{n}.npz")
    if cache.is_file():
        z = np.load(cache)
        return z["states"], z["frames"]
    states = get_initial_states(ctx.cfg.task, split, n)
    env = make_env(ctx.cfg.task, image_size=ctx.cfg.image_size, seed=ctx.cfg.seed)
    try:
        frames = np.stack([env.reset_to(s) for s in states])
    finally:
        env.close()
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, states=states, frames=frames)
    os.replace(tmp, cache)
    return states, frames


def _env_policy(ctx: Context, policy, tokenizer, temperature):
    from wmpo.models.policy import as_env_policy

    return as_env_policy(policy, tokenizer, temperature=temperature, device=ctx.device)


def episodes_to_batch(episodes: list, tokenizer, policy, group: list[int]) -> TrajectoryBatch:
    """Real episodes -> TrajectoryBatch (obs at each chunk start, the chunk's action tokens).

    Used for the DPO baseline, whose preference data are the base policy's real rollouts.
    """
    K, D = policy.chunk_len, policy.action_dim
    S = max(-(-len(ep) // K) for ep in episodes)
    N = len(episodes)
    H, W = episodes[0].frames.shape[1:3]
    obs = torch.zeros(N, S, H, W, 3, dtype=torch.uint8)
    tokens = torch.zeros(N, S, K, D, dtype=torch.int64)
    mask = torch.zeros(N, S, dtype=torch.bool)
    for n, ep in enumerate(episodes):
        T = len(ep)
        s_n = -(-T // K)
        acts = np.concatenate([ep.actions, np.repeat(ep.actions[-1:], s_n * K - T, 0)], 0)
        tok = torch.as_tensor(np.asarray(tokenizer.tokenize(tokenizer.normalize(acts)))).long()
        tokens[n, :s_n] = tok.view(s_n, K, D)
        obs[n, :s_n] = torch.as_tensor(ep.frames[0 : s_n * K : K][:s_n])
        mask[n, :s_n] = True
    instr = policy.encode_instructions([ep.instruction for ep in episodes]).cpu()
    return TrajectoryBatch(
        obs=obs,
        instr=instr,
        tokens=tokens,
        old_logp=torch.zeros(N, S, K, D),
        chunk_mask=mask,
        success=torch.tensor([bool(ep.success) for ep in episodes]),
        group=torch.as_tensor(group, dtype=torch.int64),
        length=torch.tensor([len(ep) for ep in episodes], dtype=torch.int64),
    )


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


def stage_vae(ctx: Context) -> dict:
    from wmpo.train.vae import train_vae

    res = train_vae(ctx.cfg.vae_train, [ctx.output("demos")["store"]], ctx.out / "vae", device=ctx.device)
    return _jsonable(res)


def stage_wm_pretrain(ctx: Context) -> dict:
    from wmpo.train.world_model import train_world_model

    res = train_world_model(ctx.cfg.wm_pretrain, [ctx.output("demos")["store"]], ctx.out / "wm_pretrain",
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
    policy, tok = _load_policy(ctx, ctx.output("policy_sft")["policy_path"])
    G = cfg.grpo.group_size
    n_states = max(1, cfg.real_budget // G)
    states, _ = _initial_frames(ctx, "train", cfg.num_initial_states)
    init = np.repeat(states[np.arange(n_states) % len(states)], G, axis=0)[: cfg.real_budget]
    path = ctx.path("data", "base_rollouts.h5")
    with TrajectoryStore(path, "w") as store:
        collect(_env_policy(ctx, policy, tok, cfg.grpo.temperature), cfg.task, store, init_states=init,
                num_workers=cfg.num_workers, image_size=cfg.image_size, seed=cfg.seed + 20_000, max_steps=cfg.max_episode_steps)
        succ = [bool(store.load(i).success) for i in range(len(store))]
    groups = [i // G for i in range(len(succ))]
    return {"store": str(path), "episodes": len(succ), "success_rate": float(np.mean(succ)) if succ else 0.0, "groups": groups}


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


def _wmpo_engine(ctx: Context, policy, tokenizer, wm_path: str, reward_path: str):
    from wmpo.models.reward import IncrementalSuccess, load_reward
    from wmpo.rollout.engine import ImaginationEngine

    cfg = ctx.cfg
    reward = load_reward(reward_path, ctx.device).eval()
    detector = IncrementalSuccess(reward, cfg.rollout.num_slots, ctx.device)
    return ImaginationEngine(_world_model_env(ctx, wm_path), policy, detector, tokenizer, cfg.rollout)


def wmpo_train(ctx: Context, policy, tok, wm_path: str, reward_path: str, out_dir: Path, iterations: int, tag: str = "wmpo") -> list[dict]:
    """GRPO in imagination (paper Algorithm 1) for `iterations` updates; resumable per iteration
    from out_dir/state.pt. Updates `policy` in place; -> per-iteration records."""
    from wmpo.rl.grpo import GRPOTrainer
    from wmpo.sim import TASKS
    from wmpo.utils.frames import uint8_to_model

    cfg = ctx.cfg
    trainer = GRPOTrainer(policy, cfg.grpo)
    ckpt = Path(out_dir) / "state.pt"
    history: list[dict] = []
    start = 0
    if ckpt.is_file():
        st = load_checkpoint(ckpt)
        policy.load_state_dict(st["policy"])
        trainer.load_state_dict(st["trainer"])
        history, start = st["history"], st["iteration"]
    _, frames = _initial_frames(ctx, "train", cfg.num_initial_states)
    pool = uint8_to_model(torch.as_tensor(frames)).to(ctx.device)
    engine = _wmpo_engine(ctx, policy, tok, wm_path, reward_path)
    spec = TASKS[cfg.task]
    horizon = cfg.imagined_horizon or spec.horizon
    for it in progress(range(start, iterations), total=iterations, desc=tag):
        t0 = time.time()
        policy.eval()
        batch, rstats = engine.sample_groups(pool, spec.instruction, group_size=cfg.grpo.group_size,
                                             num_trajectories=cfg.grpo.batch_size, temperature=cfg.grpo.temperature,
                                             max_steps=horizon, seed=cfg.seed * 1000 + it)
        t_roll = time.time() - t0
        rec = {"iteration": it + 1, "trajectories": len(batch), "rollout_seconds": t_roll,
               "imagined_success_rate": float(batch.success.float().mean()) if len(batch) else 0.0,
               "groups_tried": int(rstats.get("groups_tried", 0)), "groups_dropped": int(rstats.get("groups_dropped", 0))}
        if len(batch) > 0:
            ustats = trainer.update(batch.to(ctx.device))
            rec.update({k: float(v) for k, v in ustats.items()})
        else:
            rec["skipped_update"] = True  # every group was all-success or all-failure
        rec["seconds"] = time.time() - t0
        history.append(rec)
        ctx.logger.scalars({f"{tag}/{k}": v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, it + 1)
        save_checkpoint(ckpt, {"policy": policy.state_dict(), "trainer": trainer.state_dict(), "history": history, "iteration": it + 1})
    return history


def stage_wmpo(ctx: Context) -> dict:
    """WMPO from the base policy with the fine-tuned world model and the reward model."""
    from wmpo.models.policy import save_policy

    cfg = ctx.cfg
    policy, tok = _load_policy(ctx, ctx.output("policy_sft")["policy_path"])
    history = wmpo_train(ctx, policy, tok, ctx.output("wm_finetune")["path"], ctx.output("reward")["reward_path"],
                         ctx.out / "policy_wmpo", cfg.wmpo_iterations)
    final = ctx.path("policy_wmpo", "policy.pt")
    save_policy(final, policy, tok, cfg.policy_train.policy)
    save_json(ctx.path("policy_wmpo", "history.json"), history)
    return {"checkpoint": str(final), "iterations": len(history), "history": history}


def stage_lifelong(ctx: Context) -> dict:
    """Lifelong WMPO (paper section 4.5): from the WMPO policy, repeat: collect P real rollouts ->
    fine-tune world model and reward model on all real data so far -> WMPO -> evaluate."""
    from wmpo.data.store import TrajectoryStore
    from wmpo.models.policy import save_policy
    from wmpo.rl.lifelong import LifelongConfig, LifelongStages, run_lifelong
    from wmpo.sim.collect import collect
    from wmpo.sim.evaluate import evaluate
    from wmpo.train.reward import train_reward
    from wmpo.train.world_model import train_world_model

    cfg = ctx.cfg
    root = ctx.out / "lifelong"
    policy, tok = _load_policy(ctx, ctx.output("wmpo")["checkpoint"])
    G = cfg.grpo.group_size
    states, _ = _initial_frames(ctx, "train", cfg.num_initial_states)
    base_stores = [ctx.output("base_rollouts")["store"], ctx.output("demos")["store"]]
    prev_wm = [ctx.output("wm_finetune")["path"]]

    def collect_round(pol, budget: int, it: int) -> str:
        path = root / f"round{it}" / "rollouts.h5"
        init = np.repeat(states[(np.arange(max(1, budget // G)) + it) % len(states)], G, axis=0)[:budget]
        with TrajectoryStore(path, "w") as store:
            collect(_env_policy(ctx, pol, tok, cfg.grpo.temperature), cfg.task, store, init_states=init, num_workers=cfg.num_workers,
                    image_size=cfg.image_size, seed=cfg.seed + 30_000 + it, max_steps=cfg.max_episode_steps, show_progress=False)
        return str(path)

    def finetune_wm(rounds: list[str], it: int) -> str:
        res = train_world_model(cfg.wm_finetune, rounds + base_stores, root / f"round{it}" / "wm", vae=ctx.output("vae")["path"],
                                init_from=prev_wm[-1], device=ctx.device)
        prev_wm.append(res["path"])
        return res["path"]

    def finetune_reward(rounds: list[str], it: int) -> str:
        return train_reward(cfg.reward_train, rounds + base_stores, root / f"round{it}" / "reward", device=ctx.device)["reward_path"]

    def run_round(pol, wm_path: str, reward_path: str, it: int) -> dict:
        hist = wmpo_train(ctx, pol, tok, wm_path, reward_path, root / f"round{it}" / "wmpo", cfg.wmpo_iterations, tag=f"lifelong{it}")
        return {"updates": len(hist), "imagined_success_rate": hist[-1]["imagined_success_rate"] if hist else 0.0}

    def evaluate_round(pol, it: int) -> dict:
        res = evaluate(_env_policy(ctx, pol, tok, None), cfg.task, split="eval", n=cfg.eval_episodes, num_workers=cfg.num_workers,
                       image_size=cfg.image_size, max_steps=cfg.max_episode_steps, show_progress=False)
        return {"success_rate": res.success_rate, "ci95": list(res.ci95), "mean_success_length": res.mean_success_length}

    lcfg = LifelongConfig(iterations=cfg.lifelong_rounds, budget_per_iteration=cfg.real_budget, evaluate_base=False)
    records = run_lifelong(policy, LifelongStages(collect_round, finetune_wm, finetune_reward, run_round, evaluate_round), lcfg,
                           out_dir=root, logger=ctx.logger)
    final = root / "policy.pt"
    save_policy(final, policy, tok, cfg.policy_train.policy)
    return {"checkpoint": str(final), "records": _jsonable(records)}


def stage_baselines(ctx: Context) -> dict:
    """Online GRPO in the real simulator and offline DPO, on the same real-rollout budget P."""
    from wmpo.models.policy import save_policy
    from wmpo.rl.dpo import DPOTrainer
    from wmpo.rl.online import run_online_grpo, tokenizer_decoder
    from wmpo.sim import TASKS

    cfg = ctx.cfg
    spec = TASKS[cfg.task]
    out: dict[str, Any] = {}
    # online GRPO
    policy, tok = _load_policy(ctx, ctx.output("policy_sft")["policy_path"])
    ocfg = copy.deepcopy(cfg.online)
    summary = run_online_grpo(policy, cfg.task, ocfg, tokenizer_decoder(tok), spec.instruction,
                              horizon=cfg.max_episode_steps or spec.horizon, logger=ctx.logger)
    p = ctx.path("baselines", "online_grpo.pt")
    save_policy(p, policy, tok, cfg.policy_train.policy)
    out["online_grpo"] = {"checkpoint": str(p), "summary": _jsonable(summary)}
    # DPO on the base policy's P real rollouts
    policy, tok = _load_policy(ctx, ctx.output("policy_sft")["policy_path"])
    ref, _ = _load_policy(ctx, ctx.output("policy_sft")["policy_path"])
    eps = _episodes([ctx.output("base_rollouts")["store"]])
    batch = episodes_to_batch(eps, tok, policy, ctx.output("base_rollouts")["groups"][: len(eps)])
    hist = DPOTrainer(policy, cfg.dpo, reference=ref).fit(batch)
    p = ctx.path("baselines", "dpo.pt")
    save_policy(p, policy, tok, cfg.policy_train.policy)
    out["dpo"] = {"checkpoint": str(p), "steps": len(hist), "final": hist[-1] if hist else {}}
    return out


def stage_evaluate(ctx: Context) -> dict:
    from wmpo.sim.evaluate import evaluate

    cfg = ctx.cfg
    policies = {"base": ctx.output("policy_sft")["policy_path"], "wmpo": ctx.output("wmpo")["checkpoint"]}
    if cfg.lifelong_rounds > 0:
        policies["lifelong"] = ctx.output("lifelong")["checkpoint"]
    if cfg.baselines:
        policies["online_grpo"] = ctx.output("baselines")["online_grpo"]["checkpoint"]
        policies["dpo"] = ctx.output("baselines")["dpo"]["checkpoint"]
    results = {}
    for name, ck in policies.items():
        policy, tok = _load_policy(ctx, ck)
        res = evaluate(_env_policy(ctx, policy, tok, None), cfg.task, split="eval", n=cfg.eval_episodes,
                       num_workers=cfg.num_workers, image_size=cfg.image_size,
                       video_dir=str(ctx.out / "videos" / f"real_{name}"), n_videos=cfg.num_videos, max_steps=cfg.max_episode_steps)
        results[name] = _jsonable(res)
    save_json(ctx.path("eval", "results.json"), results)
    return results


def stage_videos(ctx: Context) -> dict:
    """mp4s of imagined vs real rollouts of the WMPO policy from the same initial states."""
    from wmpo.pipeline.videos import imagined_vs_real

    return imagined_vs_real(ctx)


def stage_report(ctx: Context) -> dict:
    from wmpo.pipeline.report import write_report

    return {"report": str(write_report(ctx))}


def _jsonable(x: Any) -> Any:
    if hasattr(x, "__dataclass_fields__"):
        x = asdict(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def build_stages(cfg: RunConfig) -> list[Stage]:
    return [
        Stage("demos", stage_demos),
        Stage("vae", stage_vae),
        Stage("wm_pretrain", stage_wm_pretrain),
        Stage("policy_sft", stage_policy_sft),
        Stage("base_rollouts", stage_base_rollouts),
        Stage("wm_finetune", stage_wm_finetune),
        Stage("reward", stage_reward),
        Stage("wmpo", stage_wmpo),
        Stage("baselines", stage_baselines, enabled=cfg.baselines),
        Stage("lifelong", stage_lifelong, enabled=cfg.lifelong_rounds > 0),
        Stage("evaluate", stage_evaluate),
        Stage("videos", stage_videos),
        Stage("report", stage_report),
    ]


def run_pipeline(cfg: RunConfig, out_dir: str | Path, stop_after: str | None = None) -> dict[str, dict]:
    """Run (or resume) the pipeline into out_dir. The resolved config is saved as out_dir/config.json;
    resuming with a different config is refused (start a new out_dir instead)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    resolved = asdict(cfg)
    if cfg_path.is_file():
        saved = json.loads(cfg_path.read_text())
        if json.loads(json.dumps(resolved, default=str)) != saved:
            raise ValueError(f"out: {out} holds a run with a different config ({cfg_path}); use a new --out or the same options")
    else:
        save_json(cfg_path, resolved)
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    runner = StageRunner(out)
    ctx = Context(cfg, out, runner)
    stages = build_stages(cfg)
    if stop_after is not None:
        names = [s.name for s in stages]
        if stop_after not in names:
            raise ValueError(f"stop_after: expected one of {names}, got {stop_after!r}")
        stages = stages[: names.index(stop_after) + 1]
    try:
        return runner.run(stages, ctx)
    finally:
        ctx.logger.close()
