"""Online GRPO baseline in the real simulator, on the same real-rollout budget P as WMPO (appendix B).

From training initial states, groups of G trajectories are rolled out in the real env with the
current policy (sampling temperature, action tokens decoded to env-space actions), in rounds of
`num_envs`; dynamic sampling keeps the mixed groups until B trajectories are kept, then GRPOTrainer
updates the policy; repeat until the budget is spent. Every real trajectory started counts against
P, kept or not. Appendix B: with small budgets the batch is 8 initial states (x G = 64 trajectories)
with the learning rate divided by 8.

`RealGroupSampler` gives the real simulator the imagination engine's `sample_groups` contract, so
across processes (`dist`, launched by torchrun; docs/distributed.md) the sampling is split over
the ranks by wmpo.rl.dist_sampling exactly as WMPO's imagined sampling is: each rank rolls out whole
groups from its share of the initial states with its own simulator workers and derived seeds, the
kept counts are all-reduced so the batch is exactly B, and the update is wmpo.rl.distributed's
data-parallel one (token mean over all ranks), so N ranks update as one process on the same batch.
Rank 0 writes the checkpoint (atomically) that every rank resumes from.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from wmpo.data.batch import TrajectoryBatch
from wmpo.data.groups import assemble_batch, group_ids, group_starts
from wmpo.dist import SINGLE, DistContext, derive_seed, shard_range
from wmpo.rl.dist_sampling import sample_groups_across_ranks
from wmpo.rl.distributed import DistributedGRPOTrainer, local_grpo_config
from wmpo.rl.grpo import GRPOConfig, GRPOTrainer
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint
from wmpo.utils.device import policy_device
from wmpo.utils.frames import uint8_to_model
from wmpo.utils.logging import ScalarLogger, progress


def _small_budget_grpo() -> GRPOConfig:
    # appendix B: batch size 8 (initial states) -> 64 trajectories, lr 5e-6 / 8; M keeps B/M = 4
    return GRPOConfig(batch_size=64, minibatch_size=16, lr=5e-6 / 8)


@dataclass
class OnlineGRPOConfig:
    budget: int = 128
    """P: real trajectories the baseline may roll out in total (kept or discarded)"""
    num_envs: int = 16
    """parallel simulator envs (a multiple of grpo.group_size); under torchrun, per rank"""
    max_chunks: int | None = None
    """chunks per trajectory (None: ceil(task horizon / chunk_len))"""
    image_size: int = 128
    """env render size (the policy resizes on device)"""
    seed: int = 0
    """env and sampling seed (iteration i samples with seed * 1000 + i, derived per rank)"""
    num_initial_states: int = 128
    """size of the training initial-state pool cycled through"""
    update_on_partial: bool = True
    """when the budget ends with fewer than B kept trajectories, still update on them"""
    grpo: GRPOConfig = field(default_factory=_small_budget_grpo)
    """GRPO hyper-parameters (default: appendix B's small-budget setting)"""


def as_action_decoder(decoder: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ActionTokenizer (its .decode: tokens -> bin centres -> q01/q99 env actions) or a callable."""
    if hasattr(decoder, "decode") and callable(decoder.decode):
        return decoder.decode
    if callable(decoder):
        return decoder
    raise ValueError(f"decode_actions: expected an ActionTokenizer or a callable, got {type(decoder).__name__}")


def tokenizer_decoder(tokenizer: Any, low: Any = None, high: Any = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens [N, K, D] -> env actions: tokenizer.detokenize (bin centres in [-1, 1]) then q01/q99.

    low/high default to the tokenizer's own statistics (then this is tokenizer.decode).
    """
    if low is None and high is None:
        return as_action_decoder(tokenizer)
    lo = torch.as_tensor(np.asarray(low), dtype=torch.float32)
    hi = torch.as_tensor(np.asarray(high), dtype=torch.float32)

    def decode(tokens: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(tokenizer.detokenize(tokens)).float()
        return (x + 1.0) * 0.5 * (hi.to(x.device) - lo.to(x.device)) + lo.to(x.device)

    return decode


@torch.no_grad()
def rollout_groups(
    policy: nn.Module,
    env: Any,
    init_states: np.ndarray | torch.Tensor,
    instr: torch.Tensor,
    decode_actions: Any,
    max_chunks: int,
    temperature: float,
    group: torch.Tensor,
) -> TrajectoryBatch:
    """Roll out len(init_states) real trajectories (one per env) -> TrajectoryBatch on the CPU.

    A trajectory ends at the first success or done; finished envs are left idle when env.step takes
    a `mask` (wmpo.sim.vec_env.VecEnv), else they keep stepping and their results are ignored.
    """
    decode = as_action_decoder(decode_actions)
    masked_step = "mask" in inspect.signature(env.step).parameters  # VecEnv: finished envs stay idle
    dev = policy_device(policy)
    policy.eval()
    frames = torch.as_tensor(np.asarray(env.reset_to(init_states)))
    N = frames.shape[0]
    K, D = policy.chunk_len, policy.action_dim
    alive = torch.ones(N, dtype=torch.bool)
    success = torch.zeros(N, dtype=torch.bool)
    length = torch.zeros(N, dtype=torch.int64)
    obs, toks, logps, masks = [], [], [], []
    for _s in range(max_chunks):
        if not alive.any():
            break
        obs.append(frames.clone())
        masks.append(alive.clone())
        tok, lp = policy.sample(uint8_to_model(frames.to(dev)), instr, temperature)
        toks.append(tok.cpu())
        logps.append(lp.float().cpu())
        actions = torch.as_tensor(decode(tok)).float().cpu().numpy()
        for k in range(K):
            out = env.step(actions[:, k], mask=alive.numpy()) if masked_step else env.step(actions[:, k])
            new_frames, _rew, dones, succ = out[0], out[1], out[2], out[3]
            new_frames = torch.as_tensor(np.asarray(new_frames))
            succ = torch.as_tensor(np.asarray(succ), dtype=torch.bool)
            dones = torch.as_tensor(np.asarray(dones), dtype=torch.bool)
            length += alive.long()
            success |= succ & alive
            frames = torch.where(alive[:, None, None, None], new_frames, frames)
            alive &= ~(succ | dones)
            if not alive.any():
                break
    return TrajectoryBatch(
        obs=torch.stack(obs, 1),
        instr=instr.cpu(),
        tokens=torch.stack(toks, 1),
        old_logp=torch.stack(logps, 1),
        chunk_mask=torch.stack(masks, 1),
        success=success,
        group=group,
        length=length,
    )


class RealGroupSampler:
    """GRPO group sampling in the real simulator, with the imagination engine's `sample_groups`
    contract (wmpo.rollout.engine.ImaginationEngine), so wmpo.rl.dist_sampling splits it over ranks.

    A call rolls out rounds of up to `num_envs` trajectories: whole groups of G from consecutive
    initial states of the pool it is given, starting at row `cursor` (cycling), with the policy
    sampling under `seed`. Dynamic sampling keeps the mixed groups (wmpo.data.groups.assemble_batch)
    until `num_trajectories` are kept or `budget` is spent. The caller sets `budget` (real
    trajectories this sampler may still start; every one started counts, kept or not) and `cursor`.
    Simulator envs are made once per round size and reused: `make_env(task, n, image_size, env_seed + k)`.
    """

    def __init__(self, policy: nn.Module, task: str, decode_actions: Any, make_env: Callable[[str, int, int, int], Any], *,
                 num_envs: int, image_size: int, env_seed: int, adv_eps: float = 1e-6):
        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        self.policy, self.task, self.make_env = policy, task, make_env
        self.decode = as_action_decoder(decode_actions)
        self.num_envs, self.image_size, self.env_seed, self.adv_eps = int(num_envs), int(image_size), int(env_seed), adv_eps
        self.envs: dict[int, Any] = {}
        self.budget = 0
        """real trajectories this sampler may still start"""
        self.cursor = 0
        """pool row of the next group's initial state (modulo the pool size)"""
        self.started = 0
        self.successes = 0
        """real trajectories started / successful over this sampler's life, kept or not"""

    def _env(self, n: int) -> Any:
        if n not in self.envs:
            self.envs[n] = self.make_env(self.task, n, self.image_size, self.env_seed + len(self.envs))
        return self.envs[n]

    def close(self) -> None:
        for e in self.envs.values():
            close = getattr(e, "close", None)
            if close is not None:
                close()
        self.envs = {}

    def _empty(self, instruction: str, chunks: int) -> TrajectoryBatch:
        K, D, S = self.policy.chunk_len, self.policy.action_dim, self.image_size
        instr = self.policy.encode_instructions([instruction], device=policy_device(self.policy))[:0].cpu()
        return TrajectoryBatch(obs=torch.zeros(0, chunks, S, S, 3, dtype=torch.uint8), instr=instr,
                               tokens=torch.zeros(0, chunks, K, D, dtype=torch.int64), old_logp=torch.zeros(0, chunks, K, D),
                               chunk_mask=torch.zeros(0, chunks, dtype=torch.bool), success=torch.zeros(0, dtype=torch.bool),
                               group=torch.zeros(0, dtype=torch.int64), length=torch.zeros(0, dtype=torch.int64))

    @torch.no_grad()
    def sample_groups(self, initial_states: np.ndarray | torch.Tensor, instruction: str, *, group_size: int, num_trajectories: int,
                      temperature: float, max_steps: int, dynamic_sampling: bool = True,
                      seed: int | None = None) -> tuple[TrajectoryBatch, dict[str, Any]]:
        """-> (up to num_trajectories kept trajectories in whole groups, ids 0.. in kept order, advantages set;
        fewer when the budget ran out), stats: groups_tried, groups_dropped, trajectories, and init_index
        (int64 [N], each trajectory's row in `initial_states`). max_steps: env steps per trajectory."""
        G, B = int(group_size), int(num_trajectories)
        if G < 1 or B < 1 or B % G:
            raise ValueError(f"num_trajectories: expected a positive multiple of group_size={G}, got {B}")
        states = np.asarray(initial_states.cpu() if isinstance(initial_states, torch.Tensor) else initial_states)
        if len(states) == 0:
            raise ValueError("initial_states: expected at least one initial state, got none")
        chunks = -(-int(max_steps) // self.policy.chunk_len)
        dev = policy_device(self.policy)
        first, tried = self.cursor, 0
        rounds: list[TrajectoryBatch] = []
        kept, counts = None, {"groups_dropped": 0}
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(int(seed))
            while (n_groups := min(self.num_envs, self.budget) // G) > 0:
                n = n_groups * G
                starts = group_starts(states, n_groups, G, offset=self.cursor)
                instr = self.policy.encode_instructions([instruction] * n, device=dev)
                batch = rollout_groups(self.policy, self._env(n), starts, instr, self.decode, chunks, temperature,
                                       group_ids(n_groups, G, start=tried))
                self.cursor += n_groups
                tried += n_groups
                self.budget -= n
                self.started += n
                self.successes += int(batch.success.sum())
                rounds.append(batch)
                kept, counts = assemble_batch(rounds, B, self.adv_eps, dynamic_sampling)
                if kept is not None and len(kept) >= B:
                    break
        if kept is None:
            batch, init = self._empty(instruction, chunks), torch.zeros(0, dtype=torch.int64)
        else:
            # group ids here run 0, 1, ... over the rounds and assemble_batch keeps them: group g started at row first + g
            init = (first + kept.group.cpu()) % len(states)
            batch = kept
            batch.group = torch.unique(kept.group, return_inverse=True)[1].to(torch.int64)
        return batch, {"groups_tried": tried, "groups_dropped": int(counts["groups_dropped"]), "trajectories": len(batch),
                       "trajectories_finished": sum(len(b) for b in rounds),
                       "trajectories_succeeded": sum(int(b.success.sum()) for b in rounds), "init_index": init.to(torch.int64)}


def run_online_grpo(
    policy: nn.Module,
    task: str,
    cfg: OnlineGRPOConfig,
    decode_actions: Any,
    instruction: str | None = None,
    horizon: int | None = None,
    make_env: Callable[[str, int, int, int], Any] | None = None,
    initial_states: np.ndarray | None = None,
    logger: ScalarLogger | None = None,
    *,
    dist: DistContext = SINGLE,
    strategy: str = "ddp",
    state_path: str | Path | None = None,
) -> dict[str, Any]:
    """Online GRPO in the real simulator until the budget P is spent. -> summary dict.

    decode_actions: the policy's ActionTokenizer (tokens -> env actions) or any such callable.
    instruction / horizon: default to the registered task's (wmpo.sim.tasks.get_task).

    make_env(task, num_envs, image_size, seed) defaults to wmpo.sim.vec_env.VecEnv; initial_states
    defaults to get_initial_states(task, "train", cfg.num_initial_states).

    Each iteration spends at most the budget left: rank r of N may start its share
    (`shard_range`) of the groups left, from its share of the initial states, starting at row
    (groups started so far // G // N) of that share; the batch is B trajectories over all ranks
    (wmpo.rl.dist_sampling; B/G and M divisible by N), short only when the budget runs out (updated
    on when cfg.update_on_partial). dist / strategy: the process group (SINGLE: one process) and
    the update's strategy (wmpo.rl.distributed). state_path: saved by rank 0 after every iteration
    (atomically), resumed from by every rank.
    """
    G = cfg.grpo.group_size
    N = dist.world_size
    if cfg.num_envs % G != 0:
        raise ValueError(f"num_envs: expected a multiple of group_size={G}, got {cfg.num_envs}")
    if cfg.budget < G * N:
        raise ValueError(f"budget: expected at least one group ({G} trajectories) per rank ({N} ranks), got {cfg.budget}")
    if dist.enabled or strategy != "ddp":
        trainer: GRPOTrainer = DistributedGRPOTrainer(policy, local_grpo_config(cfg.grpo, N), dist, strategy)
    else:
        trainer = GRPOTrainer(policy, cfg.grpo)
    if make_env is None:
        from wmpo.sim.vec_env import VecEnv as make_env  # noqa: N813
    if initial_states is None:
        from wmpo.sim.initial_states import get_initial_states

        initial_states = get_initial_states(task, "train", cfg.num_initial_states)
    pool = torch.as_tensor(np.asarray(initial_states))
    if instruction is None or (horizon is None and cfg.max_chunks is None):
        from wmpo.sim.tasks import get_task

        spec = get_task(task)
        instruction = spec.instruction if instruction is None else instruction
        horizon = spec.horizon if horizon is None else horizon
    max_chunks = cfg.max_chunks
    if max_chunks is None:
        if horizon is None:
            raise ValueError("horizon: expected the task horizon when cfg.max_chunks is None, got None")
        max_chunks = -(-horizon // policy.chunk_len)
    dev = policy_device(policy)
    used = successes = start = 0
    history: list[dict[str, float]] = []
    ckpt = Path(state_path) if state_path is not None else None
    if ckpt is not None and ckpt.is_file():  # every rank reads the file rank 0 wrote
        st = load_checkpoint(ckpt)
        policy.load_state_dict(st["policy"])
        trainer.load_state_dict(st["trainer"])
        history, start, used, successes = st["history"], int(st["iteration"]), int(st["used"]), int(st["successes"])
        was = int(st.get("world_size", 1))
        if was != N and dist.is_main:
            print(f"online GRPO: resuming a {was}-rank run on {N} ranks (the per-rank sampling seeds and shares change)")
    sampler = RealGroupSampler(policy, task, decode_actions, make_env, num_envs=cfg.num_envs, image_size=cfg.image_size,
                               env_seed=derive_seed(cfg.seed, dist.rank) % 2**31, adv_eps=cfg.grpo.adv_eps)
    most = math.ceil(cfg.budget / G)  # every iteration starts at least one group
    try:
        for it in progress(range(start, most), total=most, desc="online GRPO", disable=None if dist.is_main else True):
            left = (cfg.budget - used) // G  # groups the budget still allows, over all ranks
            if left < N:  # a batch needs a whole group on every rank
                break
            lo, hi = shard_range(left, dist.rank, N)
            sampler.budget, sampler.cursor = (hi - lo) * G, used // G // N
            started, succeeded = sampler.started, sampler.successes
            policy.eval()
            batch, rstats = sample_groups_across_ranks(sampler, pool, instruction, dist, group_size=G,
                                                       num_trajectories=cfg.grpo.batch_size, temperature=cfg.grpo.temperature,
                                                       max_steps=max_chunks * policy.chunk_len,
                                                       dynamic_sampling=cfg.grpo.dynamic_sampling, seed=cfg.seed * 1000 + it)
            spent, won = dist.all_reduce([sampler.started - started, sampler.successes - succeeded], "sum")
            used, successes = used + int(spent), successes + int(won)
            if len(batch) > 0 and (not rstats["short"] or cfg.update_on_partial):  # equal on every rank
                stats = trainer.update(batch.to(dev) if dev.type != "cpu" else batch)
                stats.update({"online/real_trajectories": float(used), "online/kept": float(rstats["trajectories"]),
                              "online/groups_dropped": float(rstats["groups_dropped"]),
                              "online/success_rate": float(won / max(spent, 1))})
                if dist.enabled:
                    stats["online/world_size"] = float(N)
                history.append(stats)
                if logger is not None and dist.is_main:
                    logger.scalars(stats, trainer.updates)
            if ckpt is not None:
                tstate = trainer.state_dict()  # a collective under FSDP2 / ZeRO-2: every rank takes part
                if dist.is_main:
                    save_checkpoint(ckpt, {"policy": policy.state_dict(), "trainer": tstate, "history": history,
                                           "iteration": it + 1, "used": used, "successes": successes, "world_size": N})
                dist.barrier()  # no rank runs ahead of the checkpoint it would resume from
    finally:
        sampler.close()
    return {
        "real_trajectories": used,
        "updates": trainer.updates,
        "optimizer_steps": trainer.step,
        "rollout_success_rate": successes / used if used else 0.0,
        "history": history,
        "world_size": N,
    }
