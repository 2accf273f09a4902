"""DeepSpeed ZeRO-2 as the GRPO update strategy: its configuration, and the check that it can run.

ZeRO stage 2 shards AdamW's two moments and the gradients over the data-parallel ranks and keeps
the fp32 weights replicated, which is what the GRPO policy update needs when the optimizer state
does not fit next to the world model on one GPU. The configuration maps GRPOConfig one to one:
per-rank micro-batch = M/N trajectories' chunks in `micro_batch_chunks` passes, one optimizer step
per mini-batch, the same AdamW, gradient clipping and (on GPUs) bf16.

What runs where: DeepSpeed's engine needs an accelerator it supports with a communication backend
it supports. On CUDA GPUs that is NCCL; its CPU accelerator communicates through oneCCL
(`oneccl_bindings_for_pytorch`), not gloo, and its CPU ZeRO optimizer needs a JIT-compiled
`cpu_adam` op. This project's CPU machine has neither, and `deepspeed` is not in requirements.txt
(an optional extra for GPU machines), so on a CPU the strategy is refused with a message naming
why (`check_deepspeed`), and the GRPO update uses DDP or FSDP2 instead. See docs/distributed.md.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import torch

from wmpo.dist import DistContext


class StrategyUnavailable(ValueError):
    """A distributed strategy that cannot run in this environment (the message says why)."""


def deepspeed_config(cfg: Any, world_size: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config of a GRPO update (cfg: the global wmpo.rl.grpo.GRPOConfig).

    DeepSpeed counts samples; here a sample is one trajectory of the mini-batch, so
    train_batch_size = M (one optimizer step per GRPO mini-batch) = micro * accumulation * N.
    The loss is already the mini-batch's token mean (weights normalised over all ranks), so the
    engine must not rescale it: gradient accumulation is expressed by the weights, not by DeepSpeed.
    """
    M = int(cfg.minibatch_size)
    if world_size < 1 or M % world_size:
        raise ValueError(f"minibatch_size: expected a multiple of the world size {world_size}, got {M}")
    return {
        "train_batch_size": M,
        "train_micro_batch_size_per_gpu": M // world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else 0.0,
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.adam_eps,
                                                   "weight_decay": cfg.weight_decay}},
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_scatter": True, "allgather_partitions": True},
        "bf16": {"enabled": bool(bf16)},
        "steps_per_print": 0,
        "wall_clock_breakdown": False,
    }


def check_deepspeed(device: torch.device, dist: DistContext) -> None:
    """Raise StrategyUnavailable (naming why) unless DeepSpeed ZeRO-2 can run here."""
    if device.type != "cuda":
        raise StrategyUnavailable(
            "strategy: deepspeed (ZeRO-2) needs CUDA GPUs with NCCL; this rank runs on "
            f"{device.type} (backend {dist.backend or 'none'}): DeepSpeed's CPU accelerator communicates through oneCCL "
            "(oneccl_bindings_for_pytorch), not gloo, and its CPU optimizer needs the JIT-built cpu_adam op; "
            "use --strategy ddp or fsdp2 on CPUs")
    if importlib.util.find_spec("deepspeed") is None:
        raise StrategyUnavailable("strategy: deepspeed is not installed (pip install deepspeed; an optional extra, "
                                  "not in requirements.txt); use --strategy ddp or fsdp2")
    if dist.enabled and dist.backend != "nccl":
        raise StrategyUnavailable(f"strategy: deepspeed needs the nccl backend on GPUs, got {dist.backend}")
    raise StrategyUnavailable(
        "strategy: deepspeed ZeRO-2 is configured (wmpo.rl.deepspeed_strategy.deepspeed_config) but its engine is not "
        "wired into the GRPO update in this version: it was never run here (no GPU); use --strategy ddp or fsdp2")
