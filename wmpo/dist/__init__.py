"""Process-group plumbing on torch.distributed (launched by `torchrun`): who this rank is, its
device, the few collectives the library needs (sums, broadcasts, gathers of statistics), per-rank
seeds and shares of a list. Single-process runs get `SINGLE` (world size 1, no process group) and
every collective is then the identity. See docs/distributed.md."""
from wmpo.dist.context import (
    SINGLE,
    DistContext,
    current,
    derive_seed,
    init_distributed,
    shard_range,
    shutdown_distributed,
)

__all__ = ["SINGLE", "DistContext", "current", "derive_seed", "init_distributed", "shard_range", "shutdown_distributed"]
