"""The policy protocol: what GRPO, DPO, evaluation and the rollout engine need from a VLA.

Any model implementing it can be optimized by wmpo. Actions are discrete: a chunk of
`chunk_len` (K) steps x `action_dim` (D) dimensions, each one token in [0, num_bins).

Frames are float [N, 3, H, W] in [-1, 1] (wmpo.utils.frames conventions), at any resolution: the
policy resizes on the device. Instructions are pre-encoded once per trajectory with
`encode_instructions` so the rollout loop never touches Python strings.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Policy(Protocol):
    chunk_len: int  # K
    action_dim: int  # D
    num_bins: int  # 256

    def encode_instructions(self, instructions: list[str], device: torch.device | None = None) -> torch.Tensor:
        """list of N strings -> int64 [N, L] tokens (no downloaded tokenizer)."""
        ...

    def action_logits(self, frames: torch.Tensor, instr: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W], instr [N, L] -> logits [N, K, D, num_bins], all tokens in one pass."""
        ...

    def sample(
        self, frames: torch.Tensor, instr: torch.Tensor, temperature: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (tokens int64 [N, K, D], logp float [N, K, D] under the temperature-scaled policy).

        temperature None or 0 means greedy (argmax); logp is then that of temperature 1.
        """
        ...

    def log_prob(
        self, frames: torch.Tensor, instr: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logp [N, K, D], entropy [N, K, D]) of given tokens, differentiable.

        A chunk's log-prob is logp.sum((1, 2)) (paper eq. 3).
        """
        ...
