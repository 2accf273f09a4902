"""The batch of trajectories handed from group sampling (imagined or real) to the policy update."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch


@dataclass
class TrajectoryBatch:
    """N trajectories of up to S action chunks each (K steps x D dims per chunk).

    obs[n, s] is the frame the policy read before chunk s (uint8 HWC at the world model's /
    env's frame size); rows past a trajectory's end are padding with chunk_mask False.
    """

    obs: torch.Tensor  # uint8 [N, S, H, W, 3]
    instr: torch.Tensor  # int64 [N, L] encoded instructions (Policy.encode_instructions)
    tokens: torch.Tensor  # int64 [N, S, K, D] sampled action tokens
    old_logp: torch.Tensor  # float32 [N, S, K, D] log-probs under the sampling policy/temperature
    chunk_mask: torch.Tensor  # bool [N, S] valid chunks
    success: torch.Tensor  # bool [N] reward-model (or simulator) verdict
    group: torch.Tensor  # int64 [N] group id (trajectories from one initial state share it)
    length: torch.Tensor  # int64 [N] trajectory length in env steps (frames generated)
    advantage: torch.Tensor | None = None  # float32 [N], filled by GRPO

    def __len__(self) -> int:
        return self.obs.shape[0]

    def to(self, device: torch.device | str) -> "TrajectoryBatch":
        kw = {f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v) for f in fields(self)}
        return TrajectoryBatch(**kw)

    def index(self, idx: torch.Tensor | slice) -> "TrajectoryBatch":
        """Rows `idx` of every field."""
        kw = {f.name: (v[idx] if isinstance(v := getattr(self, f.name), torch.Tensor) else v) for f in fields(self)}
        return TrajectoryBatch(**kw)

    @staticmethod
    def cat(batches: list["TrajectoryBatch"]) -> "TrajectoryBatch":
        """Concatenate along N, padding S to the longest."""
        if not batches:
            raise ValueError("batches: expected at least one TrajectoryBatch, got none")
        S = max(b.obs.shape[1] for b in batches)

        def pad(t: torch.Tensor) -> torch.Tensor:
            if t.dim() < 2 or t.shape[1] == S:
                return t
            shape = list(t.shape)
            shape[1] = S - t.shape[1]
            return torch.cat([t, t.new_zeros(shape)], 1)

        out = {}
        for f in fields(TrajectoryBatch):
            vals = [getattr(b, f.name) for b in batches]
            if any(v is None for v in vals):
                out[f.name] = None
                continue
            if f.name in ("obs", "tokens", "old_logp", "chunk_mask"):
                vals = [pad(v) for v in vals]
            out[f.name] = torch.cat(vals, 0)
        return TrajectoryBatch(**out)


def episodes_to_batch(episodes: list, tokenizer: Any, policy: Any, group: list[int]) -> TrajectoryBatch:
    """Real episodes -> TrajectoryBatch (obs at each chunk start, the chunk's action tokens).

    tokenizer: normalize / tokenize env actions (wmpo.models.tokenizer.ActionTokenizer); policy: gives
    chunk_len K, action_dim D and encode_instructions. Used for the DPO baseline, whose preference
    data are the base policy's real rollouts.
    """
    K, D = policy.chunk_len, policy.action_dim
    S = max(-(-len(ep) // K) for ep in episodes)
    N = len(episodes)
    H, W = episodes[0].frames.shape[1:3]
    obs = torch.zeros(N, S, H, W, 3, dtype=torch.uint8)
    tokens = torch.zeros(N, S, K, D, dtype=torch.int64)
    mask = torch.zeros(N, S, dtype=torch.bool)
    for n, ep in enumerate(episodes):
        T = len(ep)
        s_n = -(-T // K)
        acts = np.concatenate([ep.actions, np.repeat(ep.actions[-1:], s_n * K - T, 0)], 0)
        tok = torch.as_tensor(np.asarray(tokenizer.tokenize(tokenizer.normalize(acts)))).long()
        tokens[n, :s_n] = tok.view(s_n, K, D)
        obs[n, :s_n] = torch.as_tensor(ep.frames[0 : s_n * K : K][:s_n])
        mask[n, :s_n] = True
    instr = policy.encode_instructions([ep.instruction for ep in episodes]).cpu()
    return TrajectoryBatch(
        obs=obs,
        instr=instr,
        tokens=tokens,
        old_logp=torch.zeros(N, S, K, D),
        chunk_mask=mask,
        success=torch.tensor([bool(ep.success) for ep in episodes]),
        group=torch.as_tensor(group, dtype=torch.int64),
        length=torch.tensor([len(ep) for ep in episodes], dtype=torch.int64),
    )
