"""GRPO groups: G trajectories from one initial state. Forming them, the mixed-group test of dynamic
sampling, group-normalized advantages, and the assembly of a training batch from sampled rounds.

Used by the imagination engine (wmpo.rollout), GRPO (wmpo.rl.grpo), online GRPO, DPO and the
pipeline's real-rollout and lifelong stages, so every part forms and judges groups the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from wmpo.data.batch import TrajectoryBatch
from wmpo.utils.checks import check_tensor


# ---------------------------------------------------------------------------------------- forming


def group_starts(states: np.ndarray, num_groups: int, group_size: int, offset: int = 0) -> np.ndarray:
    """Initial states of `num_groups` groups, G rows each: groups take states offset, offset+1, ...
    (cycling over the pool) -> [num_groups * G, ...]; row j belongs to group j // G."""
    states = np.asarray(states)
    if len(states) == 0:
        raise ValueError("states: expected at least one initial state, got none")
    idx = (np.arange(num_groups) + offset) % len(states)
    return np.repeat(states[idx], group_size, axis=0)


def group_ids(num_groups: int, group_size: int, start: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """int64 [num_groups * G]: start, start (G times), start + 1, ... (row j in group start + j // G)."""
    return torch.arange(start, start + num_groups, device=device).repeat_interleave(group_size)


def groups_from_start_index(episodes: list, group_size: int) -> list[int]:
    """Group id of each stored base-policy episode: meta["start_index"] // group_size.

    The base rollouts start each initial state `group_size` times in a row (start i from state i // G);
    a store holds episodes in the order they finish, which with several workers and unequal lengths is
    not the start order, so the store position cannot stand for the group.
    """
    if group_size < 1:
        raise ValueError(f"group_size: expected >= 1, got {group_size}")
    out = []
    for i, ep in enumerate(episodes):
        start = getattr(ep, "meta", {}).get("start_index")
        if start is None:
            raise ValueError(f"episodes[{i}]: expected meta['start_index'] (written by wmpo.sim.collect), got meta keys "
                             f"{sorted(getattr(ep, 'meta', {}))}")
        out.append(int(start) // group_size)
    return out


# ---------------------------------------------------------------------------------------- judging


def is_mixed(num_success, group_count):
    """The dynamic-sampling test: a group is kept when it has both successes and failures
    (0 < successes < count). Works on ints, numpy arrays and tensors alike."""
    return (num_success > 0) & (num_success < group_count)


def _per_group(success: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (inverse index [N], successes per group, trajectories per group) over the groups present."""
    check_tensor("success", success, ndim=1)
    check_tensor("group", group, ndim=1, dtype=(torch.int64, torch.int32))
    if success.shape != group.shape:
        raise ValueError(f"group: expected shape {tuple(success.shape)} (as success), got {tuple(group.shape)}")
    r = success.to(torch.float32)
    _, inv = torch.unique(group, return_inverse=True)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    n_succ = torch.zeros(n_groups, device=r.device).index_add_(0, inv, r)
    count = torch.zeros(n_groups, device=r.device).index_add_(0, inv, torch.ones_like(r))
    return inv, n_succ, count


def group_advantages(success: torch.Tensor, group: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(R - mean) / (std + eps) within each group, population std (Algorithm 1). -> float32 [N].

    A group whose rewards are all equal gets advantage 0.
    """
    inv, n_succ, count = _per_group(success, group)
    r = success.to(torch.float32)
    centered = r - (n_succ / count)[inv]
    var = torch.zeros_like(count).index_add_(0, inv, centered * centered) / count
    return centered / (var.sqrt()[inv] + eps)


def dynamic_sampling_filter(success: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """-> bool [N]: True for trajectories whose group has both successes and failures."""
    inv, n_succ, count = _per_group(success, group)
    return is_mixed(n_succ, count)[inv]


# ---------------------------------------------------------------------------------------- batches


def assemble_batch(
    groups: Sequence[TrajectoryBatch], batch_size: int | None = None, eps: float = 1e-6, dynamic_sampling: bool = True
) -> tuple[TrajectoryBatch | None, dict[str, int]]:
    """Concatenate sampled group batches into one training batch, Algorithm 1 style.

    Each element of `groups` is one sampling round (any number of whole groups, group ids unique
    within it). Uniform groups are dropped (when dynamic_sampling), advantages are computed per
    group, group ids are renumbered to be unique across rounds, and the result is cut to the
    first `batch_size` trajectories (None: keep all). -> (batch or None if nothing kept, counts).
    """
    kept: list[TrajectoryBatch] = []
    next_gid = 0
    n_groups = n_dropped = 0
    for b in groups:
        _, inv = torch.unique(b.group, return_inverse=True)
        n_round = int(inv.max().item()) + 1 if inv.numel() else 0
        n_groups += n_round
        keep = dynamic_sampling_filter(b.success, b.group) if dynamic_sampling else torch.ones_like(b.success, dtype=torch.bool)
        n_dropped += n_round - (int(torch.unique(inv[keep]).numel()) if keep.any() else 0)
        if not keep.any():
            continue
        adv = group_advantages(b.success, b.group, eps)
        idx = keep.nonzero().squeeze(1)
        sub = b.index(idx)
        sub.advantage = adv[idx]
        sub.group = inv[idx].to(torch.int64) + next_gid
        next_gid += n_round
        kept.append(sub)
    counts = {"groups": n_groups, "groups_dropped": n_dropped}
    if not kept:
        counts["trajectories"] = 0
        return None, counts
    out = TrajectoryBatch.cat(kept)
    if batch_size is not None and len(out) > batch_size:
        out = out.index(slice(0, batch_size))
    counts["trajectories"] = len(out)
    return out, counts
