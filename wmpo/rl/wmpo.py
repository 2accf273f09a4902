"""WMPO, the paper's Algorithm 1: GRPO inside the world model.

    for each iteration:
        sample B trajectories in groups of G from the initial-state pool, inside the world model,
        judged by the reward model, with dynamic sampling        (wmpo.rollout: ImaginationEngine)
        one GRPO update of the policy on them                    (wmpo.rl.grpo: GRPOTrainer)

Everything is passed in explicitly (the world-model environment, the policy and its tokenizer, the
reward model's success detector, the GRPO settings, the initial frames); nothing here knows about
the pipeline's run folder. Resumable per iteration from `state_path`.

Across processes (`dist`, launched by torchrun; docs/distributed.md): every rank holds the world
model, reward model and policy; each samples B/N trajectories in whole groups from its share of the
initial states (wmpo.rl.dist_sampling), the update is data-parallel with the token mean taken over
all ranks (wmpo.rl.distributed: DDP, FSDP2 or DeepSpeed ZeRO-2), only statistics are gathered, and
rank 0 writes the checkpoint (atomically) that every rank resumes from.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from wmpo.dist import SINGLE, DistContext
from wmpo.rl.dist_sampling import sample_groups_across_ranks
from wmpo.rl.distributed import DistributedGRPOTrainer, local_grpo_config
from wmpo.rl.grpo import GRPOConfig, GRPOTrainer
from wmpo.rollout.engine import ImaginationEngine, RolloutConfig
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint
from wmpo.utils.logging import ScalarLogger, progress


def upgrade_history_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A history record written before `imagined_success_rate` covered every imagined trajectory (when it
    was the kept groups' rate) -> today's keys: that rate becomes `kept_success_rate`, and the rate over
    every imagined trajectory, which such a record does not hold, is left out (not estimated)."""
    if "imagined_trajectories" in rec or "imagined_success_rate" not in rec:
        return rec
    out = {k: v for k, v in rec.items() if k != "imagined_success_rate"}
    out["kept_success_rate"] = rec["imagined_success_rate"]
    return out


def wmpo_train(
    wm_env: Any,
    policy: nn.Module,
    tokenizer: Any,
    success_detector: Any,
    initial_frames: torch.Tensor,
    instruction: str,
    *,
    grpo: GRPOConfig,
    rollout: RolloutConfig,
    iterations: int,
    horizon: int,
    seed: int = 0,
    state_path: str | Path | None = None,
    logger: ScalarLogger | None = None,
    tag: str = "wmpo",
    real_eval: Callable[[nn.Module], dict[str, float]] | None = None,
    real_eval_every: int = 0,
    dist: DistContext = SINGLE,
    strategy: str = "ddp",
) -> list[dict[str, Any]]:
    """`iterations` WMPO updates of `policy` (in place); -> one record per iteration.

    wm_env: a batched world-model environment (wmpo.rollout.world_model_env.WorldModelEnv).
    policy / tokenizer: a wmpo.models.protocol.Policy and its action tokenizer.
    success_detector: the reward model's incremental success detector over rollout.num_slots rows
      (wmpo.models.reward.IncrementalSuccess), or None (every trajectory runs to the horizon).
    initial_frames: the initial-state pool, uint8 [I, H, W, 3] or model frames [I, 3, H, W].
    grpo: batch size B, group size G, temperature and the update's settings (paper Table 4).
    horizon: imagined trajectory length in env steps. seed: iteration i samples with seed * 1000 + i.
    state_path: policy + trainer + records saved after every iteration and resumed from.
    real_eval / real_eval_every: every `real_eval_every` iterations (and after the last), `real_eval(policy)`
      -> scalars (e.g. a greedy real-simulator success rate on a fixed set of states) joins that
      iteration's record under "real/<key>"; a training curve only, never used to select anything.
      Under `dist` every rank calls it (it may spread its episodes over the ranks).
    dist / strategy: the process group (wmpo.dist.init_distributed; SINGLE: one process) and the update's
      strategy 'ddp' | 'fsdp2' | 'deepspeed'. Rank r samples with seed derive_seed(seed * 1000 + i, r).
    """
    if real_eval_every < 0:
        raise ValueError(f"real_eval_every: expected >= 0, got {real_eval_every}")
    if iterations < 0:
        raise ValueError(f"iterations: expected >= 0, got {iterations}")
    if dist.enabled or strategy != "ddp":
        trainer: GRPOTrainer = DistributedGRPOTrainer(policy, local_grpo_config(grpo, dist.world_size), dist, strategy)
    else:
        trainer = GRPOTrainer(policy, grpo)
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = Path(state_path) if state_path is not None else None
    if ckpt is not None and ckpt.is_file():  # every rank reads the file rank 0 wrote
        st = load_checkpoint(ckpt)
        policy.load_state_dict(st["policy"])
        trainer.load_state_dict(st["trainer"])
        history, start = [upgrade_history_record(h) for h in st["history"]], st["iteration"]
        was = int(st.get("world_size", 1))
        if was != dist.world_size and dist.is_main:
            print(f"{tag}: resuming a {was}-rank run on {dist.world_size} ranks (the per-rank sampling seeds change)")
    engine = ImaginationEngine(wm_env, policy, success_detector, tokenizer, rollout)
    device = engine.device
    for it in progress(range(start, iterations), total=iterations, desc=tag, disable=None if dist.is_main else True):
        t0 = time.time()
        policy.eval()
        if dist.enabled:
            batch, rstats = sample_groups_across_ranks(engine, initial_frames, instruction, dist, group_size=grpo.group_size,
                                                       num_trajectories=grpo.batch_size, temperature=grpo.temperature,
                                                       max_steps=horizon, dynamic_sampling=grpo.dynamic_sampling,
                                                       seed=seed * 1000 + it)
            n_traj, kept_succ = rstats["trajectories"], rstats["success"] / max(rstats["trajectories"], 1)
        else:
            batch, rstats = engine.sample_groups(initial_frames, instruction, group_size=grpo.group_size,
                                                 num_trajectories=grpo.batch_size, temperature=grpo.temperature,
                                                 max_steps=horizon, dynamic_sampling=grpo.dynamic_sampling,
                                                 seed=seed * 1000 + it)
            n_traj, kept_succ = len(batch), float(batch.success.float().mean()) if len(batch) else 0.0
        n_imagined = int(rstats.get("trajectories_finished", n_traj))
        rec: dict[str, Any] = {
            "iteration": it + 1, "trajectories": n_traj, "rollout_seconds": time.time() - t0,
            # over every imagined trajectory that finished, kept or dropped by dynamic sampling
            "imagined_trajectories": n_imagined,
            "imagined_success_rate": int(rstats.get("trajectories_succeeded", round(kept_succ * n_traj))) / max(n_imagined, 1),
            "kept_success_rate": kept_succ,  # over the kept (mixed) groups only: between 1/G and 1 - 1/G by construction
            "groups_tried": int(rstats.get("groups_tried", 0)), "groups_dropped": int(rstats.get("groups_dropped", 0)),
        }
        if dist.enabled:
            rec["world_size"] = dist.world_size
        if len(batch) > 0:  # equal on every rank (dist_sampling keeps the same count everywhere)
            rec.update({k: float(v) for k, v in trainer.update(batch.to(device)).items()})
        else:
            rec["skipped_update"] = True  # every group was all-success or all-failure
        rec["seconds"] = time.time() - t0
        if real_eval is not None and real_eval_every > 0 and ((it + 1) % real_eval_every == 0 or it + 1 == iterations):
            policy.eval()
            rec.update({f"real/{k}": float(v) for k, v in real_eval(policy).items()})
        history.append(rec)
        if logger is not None and dist.is_main:
            logger.scalars({f"{tag}/{k}": v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, it + 1)
        if ckpt is not None:
            tstate = trainer.state_dict()  # a collective under FSDP2: every rank takes part
            if dist.is_main:
                save_checkpoint(ckpt, {"policy": policy.state_dict(), "trainer": tstate, "history": history, "iteration": it + 1,
                                       "world_size": dist.world_size})
            dist.barrier()  # no rank runs ahead of the checkpoint it would resume from
    return history
