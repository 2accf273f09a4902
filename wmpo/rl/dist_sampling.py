"""GRPO group sampling split across ranks: each rank samples whole groups from its share of the
initial states, with dynamic sampling on its own, until the count summed over ranks is exactly B.

Rank r takes the contiguous share `shard_range(I, r, N)` of the I initial states and a quota of
B/N trajectories (B/(N*G) groups). Its sampler keeps drawing groups until it has its quota or its
`max_groups` run out; the kept counts are then all-reduced (the global count). While the global
count is short of B, the short ranks sample their missing groups again with a fresh derived seed,
up to `max_rounds` rounds. If the rounds run out, every rank keeps the same number of whole groups
(the smallest rank's), as one process keeps what it found when max_groups is hit. Only counts and
statistics cross ranks; trajectories never leave the rank that imagined them.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from wmpo.data.batch import TrajectoryBatch
from wmpo.dist import DistContext, derive_seed, shard_range


def sample_groups_across_ranks(engine: Any, pool: torch.Tensor, instruction: str, dist: DistContext, *, group_size: int,
                               num_trajectories: int, temperature: float, max_steps: int, dynamic_sampling: bool, seed: int,
                               max_rounds: int = 3) -> tuple[TrajectoryBatch, dict[str, Any]]:
    """-> (this rank's trajectories: num_trajectories / N of them unless the rounds ran out, global stats).

    stats: trajectories (global, kept), success (global count, kept), groups_tried / groups_dropped (global
    sums), trajectories_finished / trajectories_succeeded (global, every finished trajectory, kept or dropped), rounds, short (True when the global batch is < num_trajectories), rollout_seconds (slowest rank).
    """
    N, r, G, B = dist.world_size, dist.rank, int(group_size), int(num_trajectories)
    if B % (G * N):
        raise ValueError(f"batch_size: {B} trajectories are not whole groups of {G} on each of {N} ranks "
                         f"(expected a multiple of {G * N})")
    I = int(pool.shape[0])
    if I < N:
        raise ValueError(f"num_initial_states: {I} initial states cannot be shared by {N} ranks (expected >= {N})")
    lo, hi = shard_range(I, r, N)
    share = pool[lo:hi]
    quota = B // N
    t0 = time.time()
    parts: list[TrajectoryBatch] = []
    inits: list[torch.Tensor] = []
    have = tried = dropped = finished = succeeded = 0
    rounds = 0
    last: TrajectoryBatch | None = None  # an empty batch of the right shapes when nothing was kept
    for rnd in range(max(1, max_rounds)):
        rounds = rnd + 1
        need = quota - have
        if need > 0:
            batch, st = engine.sample_groups(share, instruction, group_size=G, num_trajectories=need, temperature=temperature,
                                             max_steps=max_steps, dynamic_sampling=dynamic_sampling,
                                             seed=derive_seed(derive_seed(seed, r), rnd))
            last = batch
            tried += int(st.get("groups_tried", 0))
            dropped += int(st.get("groups_dropped", 0))
            finished += int(st.get("trajectories_finished", len(batch)))
            succeeded += int(st.get("trajectories_succeeded", int(batch.success.sum())))
            if len(batch):
                batch.group = batch.group + have // G  # group ids stay unique across rounds
                parts.append(batch)
                inits.append(st["init_index"] + lo)
                have += len(batch)
        if int(dist.all_reduce([have], "sum")[0]) >= B:
            break
    keep = int(dist.all_reduce([have], "min")[0])  # equal local batches (== quota unless the rounds ran out)
    keep -= keep % G
    if parts:
        batch = TrajectoryBatch.cat(parts).index(slice(0, keep))
        init_index = torch.cat(inits)[:keep]
    else:
        batch = last
        init_index = torch.zeros(0, dtype=torch.int64)
    n_total, n_succ, g_tried, g_dropped, n_fin, n_fin_succ = dist.all_reduce(
        [len(batch), float(batch.success.sum()), tried, dropped, finished, succeeded], "sum")
    wall = dist.all_reduce([time.time() - t0], "max")[0]
    stats = {"trajectories": int(n_total), "success": int(n_succ), "groups_tried": int(g_tried), "groups_dropped": int(g_dropped),
             "trajectories_finished": int(n_fin), "trajectories_succeeded": int(n_fin_succ),
             "rounds": rounds, "short": int(n_total) < B, "rollout_seconds": wall, "init_index": init_index}
    return batch, stats

