"""Offline trajectory-level DPO baseline (paper section 4.2, appendix B).

Preference pairs (success preferred over failure) come from trajectories the base policy collected
in the real simulator; the base policy, frozen, is the reference. A trajectory's log-prob is the sum
over its valid chunks of the chunk log-prob (eq. 3: sum over K*D tokens), counting only the action
steps that ran (TrajectoryBatch.length; not the padding of a last partial chunk, nor what follows a
success). Pairs come from groups of the same initial state: `wmpo.data.groups.groups_from_start_index` labels stored
episodes by the start they were collected from (Episode.meta["start_index"]), not by store order,
which follows the order episodes finish in.

    loss = -log sigmoid(beta * ((logp_w - ref_w) - (logp_l - ref_l)))

Trajectories are long (tens of chunks), so the gradient is taken in two passes that need only one
micro-batch of activations: (1) log-probs of every trajectory of the step without grad, then the
loss's derivative c_i = dL/dlogp_i; (2) per micro-batch of chunks, backward of sum(c_i * logp_chunk).
This is the exact gradient because the policy runs in eval mode (deterministic forward).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmpo.data.batch import TrajectoryBatch
from wmpo.data.groups import dynamic_sampling_filter
from wmpo.rl.grpo import AdamWConfig, executed_token_mask
from wmpo.utils.checks import check_tensor
from wmpo.utils.device import policy_device
from wmpo.utils.frames import uint8_to_model


@dataclass
class DPOConfig(AdamWConfig):
    """DPO settings; the optimizer fields (AdamWConfig) are GRPO's (paper: optimizer settings as GRPO, Table 4)."""

    beta: float = 0.1
    """DPO inverse temperature on the log-ratio margin (standard DPO value; the paper gives none)"""
    pairs_per_step: int = 16
    """preference pairs per optimizer step"""
    epochs: int = 3
    """passes over the preference pairs (DPO reuses its static data)"""
    max_pairs: int | None = 512
    """cap on the number of pairs built from the collected trajectories (None: all)"""
    cross_group: bool = True
    """pair leftover successes and failures across initial states when a group has only one kind"""
    temperature: float = 1.0
    """temperature of the log-probs compared (1.0: the policy's own likelihood)"""
    micro_batch_chunks: int = 256
    """chunks per forward/backward pass (memory only)"""
    max_grad_norm: float = 1.0
    """global gradient-norm clip per optimizer step (<= 0 disables)"""
    seed: int = 0
    """seed of pair subsampling and shuffling"""


def build_preference_pairs(
    success: torch.Tensor,
    group: torch.Tensor,
    max_pairs: int | None = None,
    cross_group: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """-> int64 [P, 2] rows (winner index, loser index), winner succeeded and loser failed.

    Within each group (same initial state) every success is paired with every failure. Trajectories
    left unpaired (their group is all success or all failure) are, if cross_group, matched across
    groups: unpaired successes with unpaired failures, cycling over the shorter list (and, if one
    side has no unpaired member, over all members of that side). With max_pairs, a random subset is
    kept, same-state pairs first.
    """
    check_tensor("success", success, ndim=1)
    check_tensor("group", group, ndim=1, dtype=(torch.int64, torch.int32), shape=tuple(success.shape))
    s = success.bool().cpu()
    g = group.cpu()
    pairs: list[tuple[int, int]] = []
    paired = dynamic_sampling_filter(s, g)  # members of mixed groups are paired within their group
    for gid in torch.unique(g[paired]).tolist():
        idx = (g == gid).nonzero().squeeze(1)
        pairs += [(w, l) for w in idx[s[idx]].tolist() for l in idx[~s[idx]].tolist()]
    gen = torch.Generator().manual_seed(seed)
    if max_pairs is not None and len(pairs) > max_pairs:
        keep = torch.randperm(len(pairs), generator=gen)[:max_pairs].sort().values.tolist()
        pairs = [pairs[i] for i in keep]
    if cross_group and (max_pairs is None or len(pairs) < max_pairs):
        lw = (s & ~paired).nonzero().squeeze(1).tolist()
        ll = (~s & ~paired).nonzero().squeeze(1).tolist()
        if lw or ll:
            if not lw:
                lw = s.nonzero().squeeze(1).tolist()
            if not ll:
                ll = (~s).nonzero().squeeze(1).tolist()
            if lw and ll:
                lw = [lw[i] for i in torch.randperm(len(lw), generator=gen).tolist()]
                ll = [ll[i] for i in torch.randperm(len(ll), generator=gen).tolist()]
                n = max(len(lw), len(ll))
                extra = [(lw[i % len(lw)], ll[i % len(ll)]) for i in range(n)]
                if max_pairs is not None:
                    extra = extra[: max_pairs - len(pairs)]
                pairs += extra
    if not pairs:
        return torch.zeros(0, 2, dtype=torch.int64)
    return torch.tensor(pairs, dtype=torch.int64)


def dpo_loss(
    logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over pairs of -log sigmoid(beta * ((logp_w - ref_w) - (logp_l - ref_l))).

    All inputs [P] trajectory log-probs. -> (loss, stats {reward_margin, reward_accuracy,
    chosen_reward, rejected_reward}), rewards being beta * (logp - ref).
    """
    check_tensor("logp_w", logp_w, ndim=1, floating=True)
    for name, t in (("logp_l", logp_l), ("ref_w", ref_w), ("ref_l", ref_l)):
        check_tensor(name, t, floating=True, shape=tuple(logp_w.shape))
    chosen = beta * (logp_w - ref_w.detach())
    rejected = beta * (logp_l - ref_l.detach())
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {
            "reward_margin": float(margin.mean()),
            "reward_accuracy": float((margin > 0).float().mean()),
            "chosen_reward": float(chosen.mean()),
            "rejected_reward": float(rejected.mean()),
        }
    return loss, stats


class DPOTrainer:
    """Trajectory-level DPO of `policy` against a frozen copy of it taken at construction (the base policy)."""

    def __init__(self, policy: nn.Module, cfg: DPOConfig | None = None, reference: nn.Module | None = None):
        self.policy = policy
        self.cfg = cfg or DPOConfig()
        self.reference = reference if reference is not None else copy.deepcopy(policy)
        self.reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        params = [p for p in policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("policy: expected an nn.Module with trainable parameters, got none")
        self.optimizer = self.cfg.optimizer(params)
        self.step = 0

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def _chunks(self, batch: TrajectoryBatch, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(position-in-rows, row, step) of every valid chunk of `rows`, split into micro-batches."""
        mask = batch.chunk_mask[rows.to(batch.chunk_mask.device)].cpu()
        pos, step = mask.nonzero(as_tuple=True)
        row = rows.cpu()[pos]
        m = max(1, self.cfg.micro_batch_chunks)
        return [(pos[i : i + m], row[i : i + m], step[i : i + m]) for i in range(0, int(pos.numel()), m)]

    def _chunk_logp(self, model: nn.Module, batch: TrajectoryBatch, row: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        dev = policy_device(model)
        frames = uint8_to_model(batch.obs[row.to(batch.obs.device), step.to(batch.obs.device)].to(dev))
        instr = batch.instr[row.to(batch.instr.device)].to(dev)
        tokens = batch.tokens[row.to(batch.tokens.device), step.to(batch.tokens.device)].to(dev)
        logp, _ = model.log_prob(frames, instr, tokens, temperature=self.cfg.temperature)
        # only the actions that ran count: not the padding after the last step, nor what follows a success
        keep = executed_token_mask(batch.length.cpu()[row.cpu()], step.cpu(), tokens.shape[1]).to(dev)
        return torch.where(keep[:, :, None], logp.float(), torch.zeros((), device=dev)).sum((1, 2))

    @torch.no_grad()
    def trajectory_logp(self, model: nn.Module, batch: TrajectoryBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
        """-> float32 [len(rows)]: sum over valid chunks of the chunk log-prob under `model`."""
        rows = torch.arange(len(batch)) if rows is None else rows.cpu()
        out = torch.zeros(len(rows), dtype=torch.float32)
        model.eval()
        for pos, row, step in self._chunks(batch, rows):
            out.index_add_(0, pos, self._chunk_logp(model, batch, row, step).cpu())
        return out

    def fit(self, batch: TrajectoryBatch, pairs: torch.Tensor | None = None) -> list[dict[str, float]]:
        """Optimize DPO on `batch` (collected by the base policy); -> per-step stats (dpo/*)."""
        cfg = self.cfg
        check_tensor("batch.chunk_mask", batch.chunk_mask, dtype=torch.bool, ndim=2)
        if pairs is None:
            pairs = build_preference_pairs(batch.success, batch.group, cfg.max_pairs, cfg.cross_group, cfg.seed)
        check_tensor("pairs", pairs, ndim=2, dtype=torch.int64, shape=(None, 2))
        if len(pairs) == 0:
            return []
        ref = self.trajectory_logp(self.reference, batch)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        history = []
        self.policy.eval()  # deterministic forward: the two-pass gradient is exact
        for _epoch in range(cfg.epochs):
            order = pairs[torch.randperm(len(pairs), generator=gen)]
            for i in range(0, len(order), cfg.pairs_per_step):
                history.append(self._step(batch, order[i : i + cfg.pairs_per_step], ref))
        return history

    def _step(self, batch: TrajectoryBatch, pairs: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        rows, inv = torch.unique(pairs.flatten(), return_inverse=True)
        inv = inv.view(-1, 2)
        logp = self.trajectory_logp(self.policy, batch, rows).requires_grad_(True)
        loss, stats = dpo_loss(logp[inv[:, 0]], logp[inv[:, 1]], ref[pairs[:, 0]], ref[pairs[:, 1]], cfg.beta)
        (coef,) = torch.autograd.grad(loss, logp)
        self.optimizer.zero_grad(set_to_none=True)
        dev = policy_device(self.policy)
        coef = coef.to(dev)
        for pos, row, step in self._chunks(batch, rows):
            lp = self._chunk_logp(self.policy, batch, row, step)
            (coef[pos.to(dev)] * lp).sum().backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if cfg.max_grad_norm > 0:
            gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        else:
            gn = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))
        self.optimizer.step()
        self.step += 1
        out = {"dpo/loss": float(loss.detach()), "dpo/grad_norm": gn, "dpo/pairs": float(len(pairs))}
        out.update({f"dpo/{k}": v for k, v in stats.items()})
        return out
