"""Online GRPO baseline in the real simulator, on the same real-rollout budget P as WMPO (appendix B).

From each training initial state a group of G trajectories is rolled out in the real env with the
current policy (sampling temperature, action tokens decoded to env-space actions); groups are
assembled with dynamic sampling and, once B trajectories are kept, GRPOTrainer updates the policy.
Every real trajectory started counts against P, kept or not. Appendix B: with small budgets the
batch is 8 initial states (x G = 64 trajectories) with the learning rate divided by 8.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from wmpo.data.batch import TrajectoryBatch
from wmpo.data.groups import assemble_batch, group_ids, group_starts
from wmpo.rl.grpo import GRPOConfig, GRPOTrainer
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
    """parallel simulator envs (a multiple of grpo.group_size)"""
    max_chunks: int | None = None
    """chunks per trajectory (None: ceil(task horizon / chunk_len))"""
    image_size: int = 128
    """env render size (the policy resizes on device)"""
    seed: int = 0
    """env and sampling seed"""
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
) -> dict[str, Any]:
    """Online GRPO in the real simulator until the budget P is spent. -> summary dict.

    decode_actions: the policy's ActionTokenizer (tokens -> env actions) or any such callable.
    instruction / horizon: default to the registered task's (wmpo.sim.tasks.get_task).

    make_env(task, num_envs, image_size, seed) defaults to wmpo.sim.vec_env.VecEnv; initial_states
    defaults to get_initial_states(task, "train", cfg.num_initial_states).
    """
    G = cfg.grpo.group_size
    if cfg.num_envs % G != 0:
        raise ValueError(f"num_envs: expected a multiple of group_size={G}, got {cfg.num_envs}")
    if cfg.budget < G:
        raise ValueError(f"budget: expected at least one group ({G} trajectories), got {cfg.budget}")
    if make_env is None:
        from wmpo.sim.vec_env import VecEnv as make_env  # noqa: N813
    if initial_states is None:
        from wmpo.sim.initial_states import get_initial_states

        initial_states = get_initial_states(task, "train", cfg.num_initial_states)
    initial_states = np.asarray(initial_states)
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
    torch.manual_seed(cfg.seed)
    trainer = GRPOTrainer(policy, cfg.grpo)
    envs: dict[int, Any] = {}
    dev = policy_device(policy)
    used = 0
    next_state = 0
    next_gid = 0
    pending: list[TrajectoryBatch] = []
    history: list[dict[str, float]] = []
    real_success = []
    n_rounds = -(-cfg.budget // cfg.num_envs)
    for _ in progress(range(n_rounds), total=n_rounds, desc="online GRPO"):
        n_groups = min(cfg.num_envs, cfg.budget - used) // G
        if n_groups == 0:
            break
        n = n_groups * G
        if n not in envs:
            envs[n] = make_env(task, n, cfg.image_size, cfg.seed + len(envs))
        starts = group_starts(initial_states, n_groups, G, offset=next_state)
        next_state += n_groups
        gid = group_ids(n_groups, G, start=next_gid)
        next_gid += n_groups
        instr = policy.encode_instructions([instruction] * n, device=dev)
        batch = rollout_groups(policy, envs[n], starts, instr, decode_actions, max_chunks, cfg.grpo.temperature, gid)
        used += n
        real_success.append(batch.success.float().mean().item())
        pending.append(batch)
        assembled, counts = assemble_batch(pending, cfg.grpo.batch_size, cfg.grpo.adv_eps, cfg.grpo.dynamic_sampling)
        last = used + G > cfg.budget
        if assembled is not None and (len(assembled) >= cfg.grpo.batch_size or (last and cfg.update_on_partial)):
            stats = trainer.update(assembled.to(dev) if dev.type != "cpu" else assembled)
            stats.update({"online/real_trajectories": float(used), "online/kept": float(len(assembled)),
                          "online/groups_dropped": float(counts["groups_dropped"]),
                          "online/success_rate": float(np.mean(real_success[-1]))})
            history.append(stats)
            if logger is not None:
                logger.scalars(stats, trainer.updates)
            pending = []
    for e in envs.values():
        close = getattr(e, "close", None)
        if close is not None:
            close()
    return {
        "real_trajectories": used,
        "updates": trainer.updates,
        "optimizer_steps": trainer.step,
        "rollout_success_rate": float(np.mean(real_success)) if real_success else 0.0,
        "history": history,
    }
