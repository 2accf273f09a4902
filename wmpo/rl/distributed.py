"""Data-parallel GRPO updates across ranks: DDP (default), FSDP2 (`fully_shard`), DeepSpeed ZeRO-2.

Each rank holds its own trajectories (whole groups, so group advantages are local). The loss weights
of a mini-batch are normalised by the token count summed over every rank (all-reduced), each rank
back-propagates its share of that one loss, and DDP / FSDP2 average the gradients over the N ranks,
which `loss_scale = N` turns back into the sum: the update equals the single-process update on the
batch whose mini-batch i is the ranks' mini-batches i side by side (`minibatch_shard_rows`).
Micro-batch counts are padded to the largest rank's (zero-weight passes), so every rank runs the
same collectives. Gradient clipping sees the synchronised (global) gradient; AdamW then steps
identically everywhere (DDP) or on each rank's shard (FSDP2).

The policy passed in stays the *rollout replica* every rank samples with: DDP and DeepSpeed ZeRO-2
(replicated weights, sharded optimizer state and gradients) train it in place; FSDP2 trains a sharded
copy and writes the gathered weights back into it after each update.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from wmpo.dist import DistContext
from wmpo.rl.deepspeed_strategy import check_deepspeed, deepspeed_config
from wmpo.rl.grpo import GRPOConfig, GRPOTrainer, _Micro

STRATEGIES = ("ddp", "fsdp2", "deepspeed")


class _LogProb(nn.Module):
    """The policy's log_prob as a forward(), so DDP / FSDP2 hooks see the passes that train it."""

    def __init__(self, policy: nn.Module, temperature: float):
        super().__init__()
        self.policy = policy
        self.temperature = temperature

    def forward(self, frames, instr, tokens):
        return self.policy.log_prob(frames, instr, tokens, temperature=self.temperature)


def minibatch_shard_rows(batch_size: int, minibatch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rows of a B-trajectory batch that rank `rank` holds so that its mini-batch i is its share of
    the single-process mini-batch i: rows [i*M + r*M/N, i*M + (r+1)*M/N) for each i."""
    if minibatch_size % world_size:
        raise ValueError(f"minibatch_size: expected a multiple of the world size {world_size}, got {minibatch_size}")
    m = minibatch_size // world_size
    starts = np.arange(0, batch_size, minibatch_size) + rank * m
    return (starts[:, None] + np.arange(m)[None]).reshape(-1)


def local_grpo_config(cfg: GRPOConfig, world_size: int) -> GRPOConfig:
    """The per-rank GRPO settings: B/N trajectories in mini-batches of M/N (B, M divisible by N;
    B/N whole groups)."""
    B, M, G = cfg.batch_size, cfg.minibatch_size, cfg.group_size
    if (B // G) % world_size:
        raise ValueError(f"batch_size: {B} trajectories = {B // G} groups of {G}, not divisible over {world_size} ranks "
                         f"(each rank samples whole groups); use a batch of a multiple of {G * world_size}")
    if M % world_size:
        raise ValueError(f"minibatch_size: expected a multiple of the world size {world_size}, got {M}")
    return dataclasses.replace(cfg, batch_size=B // world_size, minibatch_size=M // world_size)


class DistributedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose updates are data-parallel over `dist`'s ranks (strategy ddp | fsdp2 | deepspeed).

    `cfg` is the per-rank config (local_grpo_config); `policy` is the rollout replica (see module doc).
    """

    def __init__(self, policy: nn.Module, cfg: GRPOConfig, dist: DistContext, strategy: str = "ddp"):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
        device = next(policy.parameters()).device
        if strategy == "deepspeed":
            check_deepspeed(device, dist)  # raises: see wmpo.rl.deepspeed_strategy
        self.dist, self.strategy = dist, strategy
        self.rollout_policy = policy
        self.loss_scale = float(dist.world_size)
        if strategy == "fsdp2" and dist.enabled:
            from torch.distributed.fsdp import fully_shard

            train_policy = copy.deepcopy(policy)
            self.model = _LogProb(train_policy, cfg.temperature)
            for m in _shard_units(train_policy):
                fully_shard(m)
            fully_shard(self.model)
        elif dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_policy = policy
            ids = [device.index] if device.type == "cuda" else None
            # no buffer sync per forward: ranks run different numbers of no-grad passes (old log-probs)
            self.model = DDP(_LogProb(train_policy, cfg.temperature), device_ids=ids, forward_sync_buffers=False)
        else:
            train_policy = policy
            self.model = _LogProb(train_policy, cfg.temperature)
        super().__init__(train_policy, cfg)
        if strategy == "deepspeed":
            import deepspeed

            N = dist.world_size
            ds_cfg = deepspeed_config(dataclasses.replace(cfg, batch_size=cfg.batch_size * N, minibatch_size=cfg.minibatch_size * N),
                                      N, bf16=device.type == "cuda")
            # the client optimizer is GRPOConfig's AdamW, as for ddp / fsdp2; ZeRO-2 shards its moments
            self.model, self.optimizer, _, _ = deepspeed.initialize(model=self.model, optimizer=self.optimizer, config=ds_cfg)

    # -- hooks ---------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.rollout_policy.parameters()).device

    def _log_prob(self, frames, instr, tokens):
        return self.model(frames, instr, tokens)

    def _global_sums(self, xs: list[float]) -> list[float]:
        return self.dist.all_reduce(xs, "sum")

    def _equalize(self, micro: list[_Micro]) -> list[_Micro]:
        n = int(self.dist.all_reduce([len(micro)], "max")[0])
        if len(micro) == 0 and n > 0:
            raise RuntimeError(f"rank {self.dist.rank}: no chunks in a mini-batch that other ranks have (local batches must "
                               f"be of equal size, every trajectory at least one chunk)")
        pad = micro[-1] if micro else None
        return micro + [_Micro(pad.rows, pad.steps, torch.zeros_like(pad.keep), torch.zeros_like(pad.weight))
                        for _ in range(n - len(micro))]

    def _grad_sync(self, last: bool):
        if self.strategy == "deepspeed":
            self.model.set_gradient_accumulation_boundary(last)  # the mini-batch ends at its last pass (then engine.step)
            return nullcontext()
        if not self.dist.enabled:
            return nullcontext()
        if self.strategy == "fsdp2":
            self.model.set_requires_gradient_sync(last)
            return nullcontext()
        return nullcontext() if last else self.model.no_sync()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.strategy == "deepspeed":
            self.model.backward(loss * self.loss_scale, scale_wrt_gas=False)  # the weights already make the mean
        else:
            super()._backward(loss)

    def _optimizer_step(self, params: list) -> float:
        if self.strategy != "deepspeed":
            return super()._optimizer_step(params)
        self.model.step()  # clips to gradient_clipping (= max_grad_norm) and steps AdamW on this rank's shard
        gn = self.model.get_global_grad_norm()
        return float(gn) if gn is not None else float("nan")

    def _reduce_acc(self, acc: dict) -> dict:
        keys = ["loss", "entropy", "n_tok", "n", "clip", "ratio", "kl"]
        sums = self.dist.all_reduce([acc[k] for k in keys], "sum")
        out = dict(zip(keys, sums))
        out["rmax"] = self.dist.all_reduce([acc["rmax"]], "max")[0]
        out["rmin"] = self.dist.all_reduce([acc["rmin"]], "min")[0]
        return out

    # -- weights -------------------------------------------------------------------------------
    def update(self, batch):
        out = super().update(batch)
        if self.strategy == "fsdp2" and self.dist.enabled:
            self.rollout_policy.load_state_dict(self._full_model_state(cpu_offload=False))
        return out

    def _full_model_state(self, cpu_offload: bool) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))

    def state_dict(self) -> dict:
        """Full (unsharded) state; a collective under FSDP2 and DeepSpeed (every rank calls it, rank 0 writes it).
        DeepSpeed: the ZeRO-2 optimizer's per-rank partitions, gathered (resume on as many ranks)."""
        if self.strategy == "deepspeed":
            return {"policy": self.rollout_policy.state_dict(), "zero2_partitions": self.dist.all_gather_object(self.optimizer.state_dict()),
                    "world_size": self.dist.world_size, "step": self.step, "updates": self.updates}
        if self.strategy != "fsdp2" or not self.dist.enabled:
            return super().state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {"policy": self._full_model_state(cpu_offload=True),
                "optimizer": get_optimizer_state_dict(self.policy, self.optimizer, options=opts),
                "step": self.step, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if self.strategy == "deepspeed":
            parts = state.get("zero2_partitions")
            if parts is None or len(parts) != self.dist.world_size:
                raise ValueError(f"strategy: a deepspeed run resumes with its own ZeRO-2 state on as many ranks "
                                 f"({state.get('world_size', 'no deepspeed state')}), not {self.dist.world_size}")
            self.rollout_policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(parts, load_optimizer_states=True, load_from_fp32_weights=True)
            self.step, self.updates = int(state["step"]), int(state["updates"])
            return
        if self.strategy != "fsdp2" or not self.dist.enabled:
            return super().load_state_dict(state)
        _load_full_into_sharded(self.policy, self.optimizer, state["policy"], state["optimizer"])
        self.rollout_policy.load_state_dict(state["policy"])
        self.step, self.updates = int(state["step"]), int(state["updates"])


def _shard_units(policy: nn.Module) -> list[nn.Module]:
    """FSDP2 units: every element of the policy's ModuleLists (transformer blocks), deepest first."""
    units = [m for ml in policy.modules() if isinstance(ml, nn.ModuleList) for m in ml
             if any(True for _ in m.parameters(recurse=True))]
    return list(reversed(units))


@torch.no_grad()
def _load_full_into_sharded(module: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Load full (unsharded) weights and AdamW state, keyed by parameter name as get_model_state_dict /
    get_optimizer_state_dict(full_state_dict=True) write them, into FSDP2-sharded `module` and `optimizer`:
    every rank holds the full tensors and keeps its shard (distribute_tensor on the parameter's mesh)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        full = full.to(like.device, like.dtype)
        return distribute_tensor(full, like.device_mesh, like.placements) if isinstance(like, DTensor) else full

    names = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if name not in model_state:
            raise ValueError(f"checkpoint: no weights for {name!r} in the policy state")
        src = shard_like(model_state[name], t)
        (t.to_local() if isinstance(t, DTensor) else t).copy_(src.to_local() if isinstance(src, DTensor) else src)
        names[id(t)] = name
    state = optim_state["state"]
    for group, saved in zip(optimizer.param_groups, optim_state["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})
        for p in group["params"]:
            st = state.get(names[id(p)])
            if st is not None:
                optimizer.state[p] = {k: (shard_like(v, p) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
