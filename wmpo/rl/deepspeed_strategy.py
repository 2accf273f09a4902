"""DeepSpeed ZeRO-2 as the GRPO update strategy: its configuration, and the check that it can run.

ZeRO stage 2 shards AdamW's two moments and the gradients over the data-parallel ranks and keeps
the weights replicated (so every rank still holds the full policy it samples with), which is what
the GRPO update needs when the optimizer state does not fit next to the world model on one GPU.
The configuration maps GRPOConfig one to one: one optimizer step per GRPO mini-batch of M
trajectories (M/N per rank, in as many `micro_batch_chunks` passes as it takes: the accumulation
boundary is set by the trainer, not counted by DeepSpeed), GRPOConfig's own AdamW as the client
optimizer, gradient clipping at max_grad_norm, bf16 on GPUs.

`deepspeed` is an optional extra (not in requirements.txt): `pip install deepspeed`. On this project's
CPU machine deepspeed 0.19.8 installs, picks its CPU accelerator with gloo, JIT-builds its shared-memory
communication op on first use (a C++ compiler is needed), and runs ZeRO-2 (tests/test_distributed.py
checks that a 2-rank ZeRO-2 update equals the single-process one when deepspeed is installed).
`check_deepspeed` refuses it, with the reason, where it cannot run.
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
    train_batch_size = M (one optimizer step per GRPO mini-batch) = micro (M/N) * accumulation (1) * N.
    The loss is already the mini-batch's token mean over all ranks, so DeepSpeed must not rescale it.
    """
    M = int(cfg.minibatch_size)
    if world_size < 1 or M % world_size:
        raise ValueError(f"minibatch_size: expected a multiple of the world size {world_size}, got {M}")
    return {
        "train_batch_size": M,
        "train_micro_batch_size_per_gpu": M // world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else 0.0,
        "zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True,
                              "reduce_scatter": True, "allgather_partitions": True},
        "zero_allow_untested_optimizer": True,  # the client optimizer: torch AdamW (GRPOConfig.optimizer)
        "bf16": {"enabled": bool(bf16)},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def check_deepspeed(device: torch.device, dist: DistContext) -> None:
    """Raise StrategyUnavailable (naming why) unless DeepSpeed ZeRO-2 can run here."""
    if importlib.util.find_spec("deepspeed") is None:
        raise StrategyUnavailable("strategy: deepspeed is not installed (an optional extra, not in requirements.txt: "
                                  "pip install deepspeed; its first use JIT-builds a C++ op); use --strategy ddp or fsdp2")
    if device.type not in ("cuda", "cpu"):
        raise StrategyUnavailable(f"strategy: deepspeed runs here on CUDA GPUs (nccl) or CPUs (gloo), not on {device.type}")
    if not dist.enabled:
        raise StrategyUnavailable("strategy: deepspeed needs a process group of 2 or more ranks (torchrun --nproc-per-node N, "
                                  "N >= 2); one process updates with ddp's plain step")
    if (dist.backend == "nccl") != (device.type == "cuda"):
        raise StrategyUnavailable(f"strategy: deepspeed on {device.type} needs the "
                                  f"{'nccl' if device.type == 'cuda' else 'gloo'} backend, got {dist.backend}")
