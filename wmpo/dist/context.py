"""The rank's view of the process group: rank, world size, device, backend, and collectives.

`init_distributed()` reads the variables `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR/PORT) and joins the default process group: NCCL with one GPU per rank
(cuda:LOCAL_RANK) when CUDA is available, gloo on CPUs. Without WORLD_SIZE > 1 it returns `SINGLE`
and creates no group. Only statistics travel through these helpers (float sums, small objects);
gradients travel through DDP / FSDP2 themselves.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 7 * 24 * 3600
"""process-group timeout: ranks > 0 wait at a barrier while rank 0 runs a single-process stage
(world-model pretraining can take hours); torchrun ends every rank when one fails, so a long
timeout does not hang a failed run. WMPO_DIST_TIMEOUT_S overrides it."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    """'gloo' | 'nccl'; None: a single process, no process group"""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """this rank's compute device (cuda:LOCAL_RANK with NCCL)"""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where tensors handed to collectives must live (NCCL: the GPU; gloo: the CPU)."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend or "none", "local_world_size": self.local_world_size}

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Element-wise sum / max / min of `values` over the ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        if op not in ops:
            raise ValueError(f"op: expected one of {sorted(ops)}, got {op!r}")
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=ops[op])
        return t.cpu().tolist()

    def all_reduce_tensor(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum / max / min of a (small) tensor over the ranks; -> a new tensor on t's device."""
        if not self.enabled:
            return t.clone()
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        x = t.detach().to(self.comm_device, copy=True)
        dist.all_reduce(x, op=ops[op])
        return x.to(t.device)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.comm_device if self.backend == "nccl" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


SINGLE = DistContext()
_current: DistContext = SINGLE


def current() -> DistContext:
    """The context `init_distributed` set up in this process (SINGLE before, or without torchrun)."""
    return _current


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer (set by torchrun), got {raw!r}") from None


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes (idempotent); -> this rank's context.

    backend None: 'nccl' when CUDA is available (and WMPO_DEVICE does not ask for the CPU), else 'gloo'.
    """
    global _current
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return _current
    if _current.enabled:
        return _current
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    want_cpu = os.environ.get("WMPO_DEVICE", "").startswith("cpu")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and not want_cpu else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend: expected 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend: 'nccl' needs CUDA GPUs, none is available (use gloo on CPUs)")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK: {local_rank} but only {torch.cuda.device_count()} GPUs on this node "
                             f"(torchrun --nproc-per-node must not exceed the GPUs of a node)")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        os.environ["WMPO_DEVICE"] = str(device)  # default_device() of every library module -> this rank's GPU
    else:
        device = torch.device("cpu")
    timeout = float(timeout_s if timeout_s is not None else os.environ.get("WMPO_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout),
                                device_id=device if backend == "nccl" else None)
    _current = DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                           backend=backend, device=device)
    return _current


def shutdown_distributed() -> None:
    """Destroy the process group. Collect garbage first: DDP/FSDP2 wrappers left in reference cycles would
    otherwise be finalised during interpreter teardown, where gloo's worker threads can abort the process."""
    global _current
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


def derive_seed(seed: int, rank: int) -> int:
    """A per-rank seed from a run seed: different ranks never repeat each other's random streams,
    and rank 0 of any world size differs from the single-process seed only by the derivation."""
    if rank < 0:
        raise ValueError(f"rank: expected >= 0, got {rank}")
    return int(np.random.SeedSequence([int(seed) % (2**63), int(rank)]).generate_state(1, np.uint64)[0] % (2**62))


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of this rank's contiguous share of n items (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
    base, extra = divmod(int(n), world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)
