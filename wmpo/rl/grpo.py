"""GRPO without KL (paper eq. 3-5, Algorithm 1): group advantages, dynamic sampling, clipped update.

Conventions (see docs/rl.md):
  * Batch size B and mini-batch size M count *trajectories* (Algorithm 1). The paper's Table 4 says
    "batch size 64, mini-batch 128", which only makes sense (M | B) if 64 counts initial states:
    appendix B confirms "a single model update requires at least 64 x 8 = 512 real trajectories".
    So the paper preset is B = 64 groups x G 8 = 512 trajectories, M = 128 -> 4 optimizer steps
    per batch.
  * Ratios are per token (each of a chunk's K*D action tokens has its own ratio, as in the
    official code built on veRL); `ratio_level="chunk"` uses the chunk ratio of eq. 3 instead.
  * Log-probs (old and new) are those of the temperature-scaled policy, softmax(logits / T), at
    the sampling temperature: that is the distribution the actions were drawn from, so the
    importance ratio is exactly 1 at theta_old.
  * Loss = token-mean over all valid tokens of the mini-batch (DAPO); `loss_agg="traj_mean"` gives
    eq. 4's per-trajectory mean instead.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from wmpo.data.batch import TrajectoryBatch
from wmpo.data.groups import group_advantages
from wmpo.utils.checks import check_tensor
from wmpo.utils.device import policy_device
from wmpo.utils.frames import uint8_to_model


@dataclass
class AdamWConfig:
    """The policy optimizer of GRPO and of the DPO baseline (paper Table 4; DPO: "as GRPO")."""

    lr: float = 5e-6
    """AdamW learning rate (paper Table 4)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (paper Table 4)"""
    weight_decay: float = 0.0
    """AdamW weight decay; the paper gives none for GRPO, we use 0 (as its world-model Table 3)"""
    adam_eps: float = 1e-8
    """AdamW epsilon"""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON round trips give lists

    def optimizer(self, params) -> torch.optim.AdamW:
        return torch.optim.AdamW(params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay, eps=self.adam_eps)


@dataclass
class GRPOConfig(AdamWConfig):
    batch_size: int = 512
    """B, trajectories per policy update (paper: 64 initial states x G=8, see module docstring)"""
    group_size: int = 8
    """G, trajectories sampled from each initial state (paper Table 4)"""
    minibatch_size: int = 128
    """M, trajectories per optimizer step; must divide batch_size (paper Table 4)"""
    micro_batch_chunks: int = 256
    """chunks per forward/backward pass inside a mini-batch (gradient accumulation; memory only)"""
    epochs: int = 1
    """E, passes over each batch (paper: 1)"""
    clip_low: float = 0.2
    """epsilon_low: ratio clipped below at 1 - clip_low (paper Table 4)"""
    clip_high: float = 0.28
    """epsilon_high: ratio clipped above at 1 + clip_high (paper Table 4, DAPO clip-higher)"""
    temperature: float = 1.6
    """sampling temperature; old and new log-probs are both taken at it (paper Table 4)"""
    adv_eps: float = 1e-6
    """added to the group std in (R - mean) / (std + eps)"""
    max_grad_norm: float = 1.0
    """global gradient-norm clip per optimizer step (<= 0 disables)"""
    ratio_level: str = "token"
    """'token': one ratio per action token (official code); 'chunk': eq. 3's chunk log-prob ratio"""
    loss_agg: str = "token_mean"
    """'token_mean': mean over all valid tokens of a mini-batch (DAPO); 'traj_mean': eq. 4"""
    recompute_old_logp: bool = True
    """recompute old log-probs with the update's own forward passes (exact ratio 1 at theta_old)"""
    dropout_in_update: bool = False
    """keep the policy in train mode (dropout on) during updates; off makes ratios exact"""
    dynamic_sampling: bool = True
    """drop groups whose trajectories all succeed or all fail (DAPO dynamic sampling)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size % self.minibatch_size != 0:
            raise ValueError(
                f"minibatch_size: expected a divisor of batch_size={self.batch_size}, got {self.minibatch_size}"
            )
        if self.ratio_level not in ("token", "chunk"):
            raise ValueError(f"ratio_level: expected 'token' or 'chunk', got {self.ratio_level!r}")
        if self.loss_agg not in ("token_mean", "traj_mean"):
            raise ValueError(f"loss_agg: expected 'token_mean' or 'traj_mean', got {self.loss_agg!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0 for GRPO sampling, got {self.temperature}")


# ----------------------------------------------------------------------------------------------
# hand-checkable pieces


def clipped_surrogate(
    new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element min(r*A, clip(r, 1-low, 1+high)*A) (to maximize), ratio r, and bool 'clipped'.

    `advantages` broadcasts against the log-prob shape. 'clipped' marks elements where the clipped
    term is the active one (so the gradient is zero).
    """
    ratio = torch.exp(new_logp - old_logp)
    adv = advantages.to(ratio.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    obj = torch.minimum(unclipped, clipped)
    is_clipped = clipped < unclipped
    return obj, ratio, is_clipped


def executed_token_mask(length: torch.Tensor, steps: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """-> bool [C, K]: True for the action steps of chunks `steps` [C] that ran in their trajectory.

    length [C]: the trajectory's env steps (TrajectoryBatch.length: actions executed, up to and including
    the one that solved the task, or up to the horizon). Step k of chunk s is global step s*K + k; it
    ran iff s*K + k < length. The actions after a success (or past the horizon) never ran: they must
    carry no advantage (GRPO) and no likelihood (DPO), as in the authors' code.
    """
    check_tensor("length", length, ndim=1, dtype=(torch.int64, torch.int32))
    check_tensor("steps", steps, shape=tuple(length.shape), dtype=(torch.int64, torch.int32))
    k = torch.arange(chunk_len, device=steps.device)
    return steps.to(torch.int64)[:, None] * chunk_len + k[None] < length.to(steps.device, torch.int64)[:, None]


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    *,
    token_weight: torch.Tensor | None = None,
    ratio_level: str = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of -min(r*A, clip(r, 1-low, 1+high)*A) over the kept tokens (eq. 4, no KL).

    new_logp, old_logp: [N, ...] per-token log-probs; advantages: [N] (broadcast over the token
    dims) or the log-prob shape; token_mask: bool, broadcastable to the log-prob shape (False: the
    token is dropped, e.g. an action after the success step).
    token_weight (broadcastable to the log-prob shape): each kept token's weight; default
    1 / (number of kept tokens), i.e. the token-mean over kept tokens. GRPOTrainer passes the weights
    of the whole mini-batch, so that the losses of its micro-batches add up to the mini-batch's loss.
    ratio_level 'chunk': one ratio per row n, exp(sum over its kept tokens of new - old) (eq. 3's chunk
    log-prob), advantages [N]; the row's weight is the sum of its kept tokens' weights.
    -> (loss scalar, stats {clip_frac, clip_frac_low, clip_frac_high, ratio_mean, ratio_max,
    ratio_min, approx_kl, num_ratios}) over the kept tokens (rows with a kept token for 'chunk').
    """
    check_tensor("new_logp", new_logp, floating=True)
    check_tensor("old_logp", old_logp, floating=True, shape=tuple(new_logp.shape))
    check_tensor("advantages", advantages, floating=True)
    if ratio_level not in ("token", "chunk"):
        raise ValueError(f"ratio_level: expected 'token' or 'chunk', got {ratio_level!r}")
    if advantages.dim() < new_logp.dim():
        if tuple(advantages.shape) != tuple(new_logp.shape[: advantages.dim()]):
            raise ValueError(
                f"advantages: expected shape {tuple(new_logp.shape[:1])} or {tuple(new_logp.shape)}, got {tuple(advantages.shape)}"
            )
        advantages = advantages.reshape(*advantages.shape, *([1] * (new_logp.dim() - advantages.dim())))
    if token_mask is None:
        mask = torch.ones_like(new_logp, dtype=torch.bool)
    else:
        mask = torch.broadcast_to(token_mask.to(torch.bool), new_logp.shape)
    m = mask.to(new_logp.dtype)
    if token_weight is None:
        w = m / m.sum().clamp_min(1.0)
    else:
        w = torch.broadcast_to(token_weight.to(new_logp.dtype), new_logp.shape) * m
    if ratio_level == "chunk":
        if advantages.dim() > 1 and advantages[0].numel() != 1:
            raise ValueError(f"advantages: expected one per row [{new_logp.shape[0]}] for ratio_level='chunk', got {tuple(advantages.shape)}")
        dims = tuple(range(1, new_logp.dim()))
        zero = torch.zeros((), dtype=new_logp.dtype, device=new_logp.device)
        new_l = torch.where(mask, new_logp, zero)
        old_l = torch.where(mask, old_logp.detach(), zero)
        new_l, old_l = (new_l.sum(dims), old_l.sum(dims)) if dims else (new_l, old_l)
        adv = advantages.detach().reshape(-1)
        obj, ratio, is_clipped = clipped_surrogate(new_l, old_l, adv, clip_low, clip_high)
        valid = mask.flatten(1).any(1) if dims else mask
        loss = -torch.where(valid, obj * (w.sum(dims) if dims else w), 0.0).sum()
        stats = _ratio_stats(ratio.detach(), is_clipped, adv, valid)
        return loss, stats
    obj, ratio, is_clipped = clipped_surrogate(new_logp, old_logp.detach(), advantages.detach(), clip_low, clip_high)
    loss = -torch.where(mask, obj * w, 0.0).sum()  # dropped tokens contribute nothing, not even NaN
    stats = _ratio_stats(ratio.detach(), is_clipped, torch.broadcast_to(advantages, obj.shape), mask)
    return loss, stats


def _ratio_stats(ratio: torch.Tensor, is_clipped: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        valid = mask
        n = valid.sum().clamp_min(1).to(torch.float64)
        r = ratio[valid].to(torch.float64)
        a = adv.detach()[valid]
        c = is_clipped[valid]
        log_r = r.log()
        return {
            "clip_frac": float(c.sum() / n),
            "clip_frac_low": float((c & (a < 0)).sum() / n),
            "clip_frac_high": float((c & (a > 0)).sum() / n),
            "ratio_mean": float(r.sum() / n),
            "ratio_max": float(r.max()) if r.numel() else 1.0,
            "ratio_min": float(r.min()) if r.numel() else 1.0,
            "approx_kl": float(((r - 1.0) - log_r).sum() / n),
            "num_ratios": int(valid.sum()),
        }


# ----------------------------------------------------------------------------------------------
# trainer


@dataclass
class _Micro:
    """The valid chunks of a slice of trajectories, flattened to [C, ...]."""

    rows: torch.Tensor  # int64 [C] trajectory row (in the batch) of each chunk
    steps: torch.Tensor  # int64 [C] chunk index inside its trajectory
    keep: torch.Tensor = field(default=None)  # bool [C, K] action steps that ran (executed_token_mask)
    weight: torch.Tensor = field(default=None)  # float [C, K] loss weight per token of a step (0 where not kept;
    # times D tokens per step, sums to 1 over a mini-batch)


class GRPOTrainer:
    """Policy updates of Algorithm 1 on TrajectoryBatch batches (no KL, no reference model).

    The policy must be an nn.Module implementing wmpo.models.protocol.Policy.
    Data-parallel training (wmpo.rl.distributed) overrides the hooks marked "hook": the forward
    module, the sums of token counts over ranks, equal micro-batch counts and gradient sync.
    """

    loss_scale = 1.0  # hook: gradients averaged over N ranks by DDP / FSDP2 are scaled back to sums

    STAT_KEYS = ("grpo/loss", "grpo/clip_frac", "grpo/ratio_mean", "grpo/entropy", "grpo/grad_norm")

    def __init__(self, policy: nn.Module, cfg: GRPOConfig | None = None):
        self.policy = policy
        self.cfg = cfg or GRPOConfig()
        params = [p for p in policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("policy: expected an nn.Module with trainable parameters, got none")
        self.optimizer = self.cfg.optimizer(params)
        self.step = 0  # optimizer steps taken
        self.updates = 0  # batches consumed
        self.minibatch_stats: list[dict[str, float]] = []  # per optimizer step of the last update()

    # -- bookkeeping -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.updates = int(state["updates"])

    # -- chunk iteration ---------------------------------------------------------------------
    def _minibatches(self, n: int) -> list[slice]:
        m = self.cfg.minibatch_size
        return [slice(i, min(i + m, n)) for i in range(0, n, m)]

    def _micro_batches(self, batch: TrajectoryBatch, rows: slice) -> list[_Micro]:
        """Valid chunks of trajectories `rows`, split into micro-batches, with per-token loss weights.

        Only the action steps that ran (executed_token_mask) are kept and weighted: 'token_mean' weighs
        every kept token of the mini-batch alike, 'traj_mean' every trajectory alike (its kept tokens
        alike), so the tokens after a success step neither carry advantage nor count in the mean.
        """
        mask = batch.chunk_mask[rows].cpu()
        r, s = mask.nonzero(as_tuple=True)
        r = r + rows.start
        n_chunks = int(r.numel())
        if n_chunks == 0:
            return []
        K, D = self.policy.chunk_len, self.policy.action_dim
        keep = executed_token_mask(batch.length.cpu()[r], s, K)
        kept = keep.to(torch.float32)
        if self.cfg.loss_agg == "token_mean":
            w = kept / (max(self._global_sum(float(kept.sum())), 1.0) * D)  # the mean over every rank's tokens
        else:
            per_traj = torch.zeros(mask.shape[0]).index_add_(0, r - rows.start, kept.sum(1))  # kept steps per trajectory
            n_traj = self._global_sum(float((per_traj > 0).sum()))
            w = kept / (per_traj[r - rows.start].clamp_min(1.0)[:, None] * D * max(n_traj, 1.0))
        out = []
        step = max(1, self.cfg.micro_batch_chunks)
        for i in range(0, n_chunks, step):
            sl = slice(i, i + step)
            out.append(_Micro(r[sl], s[sl], keep[sl], w[sl]))
        return out

    def _forward(self, batch: TrajectoryBatch, mb: _Micro) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logp, entropy) [C, K, D] of the micro-batch's chunks at the sampling temperature."""
        dev = self._device()
        rows, steps = mb.rows.to(batch.obs.device), mb.steps.to(batch.obs.device)
        frames = uint8_to_model(batch.obs[rows, steps].to(dev, non_blocking=True))
        instr = batch.instr[rows.to(batch.instr.device)].to(dev)
        tokens = batch.tokens[rows.to(batch.tokens.device), steps.to(batch.tokens.device)].to(dev)
        return self._log_prob(frames, instr, tokens)

    # -- hooks (identity in one process; see wmpo.rl.distributed) ------------------------------
    def _device(self) -> torch.device:
        return policy_device(self.policy)

    def _log_prob(self, frames, instr, tokens):
        return self.policy.log_prob(frames, instr, tokens, temperature=self.cfg.temperature)

    def _global_sum(self, x: float) -> float:
        """A count summed over the data-parallel ranks."""
        return self._global_sums([x])[0]

    def _global_sums(self, xs: list[float]) -> list[float]:
        return [float(x) for x in xs]

    def _equalize(self, micro: list[_Micro]) -> list[_Micro]:
        """The micro-batches of a mini-batch, padded so every rank runs as many passes."""
        return micro

    def _grad_sync(self, last: bool):
        """Context of a micro-batch's forward + backward: gradients synchronised on the last only."""
        return nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        (loss * self.loss_scale).backward()

    def _optimizer_step(self, params: list) -> float:
        """Clip the (synchronised) gradient to max_grad_norm, step; -> its norm before clipping."""
        cfg = self.cfg
        if cfg.max_grad_norm > 0:
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            gn = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None))
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn  # FSDP2: a DTensor of the global norm
        self.optimizer.step()
        return float(gn)

    def _reduce_acc(self, acc: dict) -> dict:
        """A mini-batch's diagnostics summed (max / min) over the ranks."""
        return acc

    def _set_mode(self, train: bool) -> None:
        self.policy.train(train and self.cfg.dropout_in_update)

    # -- public API --------------------------------------------------------------------------
    def check_batch(self, batch: TrajectoryBatch) -> None:
        N = len(batch)
        check_tensor("batch.obs", batch.obs, ndim=5, dtype=torch.uint8)
        S = batch.obs.shape[1]
        K, D = self.policy.chunk_len, self.policy.action_dim
        check_tensor("batch.tokens", batch.tokens, dtype=torch.int64, shape=(N, S, K, D))
        check_tensor("batch.old_logp", batch.old_logp, floating=True, shape=(N, S, K, D))
        check_tensor("batch.chunk_mask", batch.chunk_mask, dtype=torch.bool, shape=(N, S))
        check_tensor("batch.success", batch.success, shape=(N,))
        check_tensor("batch.group", batch.group, dtype=(torch.int64, torch.int32), shape=(N,))
        check_tensor("batch.instr", batch.instr, dtype=torch.int64, ndim=2)
        if batch.advantage is not None:
            check_tensor("batch.advantage", batch.advantage, floating=True, shape=(N,))

    @torch.no_grad()
    def recompute_old_logp(self, batch: TrajectoryBatch) -> TrajectoryBatch:
        """Fill batch.old_logp with log pi_theta_old at the sampling temperature (in place; returns batch).

        Uses exactly the mini/micro-batch partition of `update`, so the first mini-batch of the
        update sees ratio == 1 bit for bit.
        """
        self.check_batch(batch)
        self._set_mode(True)
        old = torch.zeros_like(batch.old_logp, dtype=torch.float32)
        for rows in self._minibatches(len(batch)):
            for mb in self._equalize(self._micro_batches(batch, rows)):
                logp, _ = self._forward(batch, mb)
                old[mb.rows.to(old.device), mb.steps.to(old.device)] = logp.float().to(old.device)
        batch.old_logp = old
        return batch

    def update(self, batch: TrajectoryBatch) -> dict[str, float]:
        """E epochs over B/M contiguous mini-batches; one AdamW step each. -> stats (grpo/*)."""
        cfg = self.cfg
        self.check_batch(batch)
        if batch.advantage is None:
            batch.advantage = group_advantages(batch.success, batch.group, cfg.adv_eps)
        if cfg.recompute_old_logp:
            self.recompute_old_logp(batch)
        self._set_mode(True)
        dev = self._device()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.minibatch_stats = []
        for _epoch in range(cfg.epochs):
            for rows in self._minibatches(len(batch)):
                micro = self._equalize(self._micro_batches(batch, rows))
                if not micro:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                acc = {"loss": 0.0, "entropy": 0.0, "n_tok": 0, "n": 0, "clip": 0.0, "ratio": 0.0, "kl": 0.0, "rmax": 0.0, "rmin": float("inf")}
                for i_mb, mb in enumerate(micro):
                    with self._grad_sync(i_mb == len(micro) - 1):
                        logp, ent = self._forward(batch, mb)
                        loss, st, keep = self._micro_loss(batch, mb, logp, dev)
                        self._backward(loss)
                    with torch.no_grad():
                        # diagnostics: means over the mini-batch's kept ratios (tokens or chunks) and tokens
                        n = st["num_ratios"]
                        acc["loss"] += float(loss)
                        kept_ent = torch.broadcast_to(keep, ent.shape)
                        acc["entropy"] += float(ent.double()[kept_ent].sum())
                        acc["n_tok"] += int(kept_ent.sum())
                        acc["clip"] += st["clip_frac"] * n
                        acc["ratio"] += st["ratio_mean"] * n
                        acc["kl"] += st["approx_kl"] * n
                        acc["n"] += n
                        if n:
                            acc["rmax"] = max(acc["rmax"], st["ratio_max"])
                            acc["rmin"] = min(acc["rmin"], st["ratio_min"])
                acc = self._reduce_acc(acc)
                gn = self._optimizer_step(params)
                self.step += 1
                self.minibatch_stats.append(
                    {
                        "grpo/loss": acc["loss"],
                        "grpo/clip_frac": acc["clip"] / max(acc["n"], 1),
                        "grpo/ratio_mean": acc["ratio"] / max(acc["n"], 1),
                        "grpo/ratio_max": acc["rmax"],
                        "grpo/ratio_min": acc["rmin"],
                        "grpo/approx_kl": acc["kl"] / max(acc["n"], 1),
                        "grpo/entropy": acc["entropy"] / max(acc["n_tok"], 1),
                        "grpo/grad_norm": float(gn),
                    }
                )
        return self._finish_update(batch)

    def _micro_loss(self, batch: TrajectoryBatch, mb: _Micro, logp: torch.Tensor, dev: torch.device):
        """-> (loss with the mini-batch's weights, grpo_loss stats, kept-step mask [C, K, 1])."""
        cfg = self.cfg
        old = batch.old_logp[mb.rows.to(batch.old_logp.device), mb.steps.to(batch.old_logp.device)].to(dev, torch.float32)
        adv = batch.advantage[mb.rows.to(batch.advantage.device)].to(dev, torch.float32)
        keep = mb.keep.to(dev)[:, :, None]  # [C, K, 1]: broadcast over the D tokens of a step
        # the tested loss (grpo_loss) with the mini-batch's weights: micro-batch losses add up
        loss, st = grpo_loss(logp.float(), old, adv, keep, cfg.clip_low, cfg.clip_high,
                             token_weight=mb.weight.to(dev)[:, :, None], ratio_level=cfg.ratio_level)
        return loss, st, keep

    def _finish_update(self, batch: TrajectoryBatch) -> dict[str, float]:
        self.updates += 1
        self.policy.train(False)
        out = {k: sum(s[k] for s in self.minibatch_stats) / max(1, len(self.minibatch_stats)) for k in self.minibatch_stats[0]} if self.minibatch_stats else {k: 0.0 for k in self.STAT_KEYS}
        if self.minibatch_stats:
            out["grpo/ratio_max"] = max(s["grpo/ratio_max"] for s in self.minibatch_stats)
            out["grpo/ratio_min"] = min(s["grpo/ratio_min"] for s in self.minibatch_stats)
        # batch statistics over every rank's trajectories (sums: identity in one process)
        n, succ, adv, chunks = self._global_sums([len(batch), float(batch.success.float().sum()),
                                                  float(batch.advantage.abs().sum()), float(batch.chunk_mask.sum())])
        out["grpo/success_rate"] = succ / n if n else 0.0
        out["grpo/adv_abs_mean"] = adv / n if n else 0.0
        out["grpo/chunks"] = chunks
        out["grpo/optimizer_steps"] = float(len(self.minibatch_stats))
        return out
