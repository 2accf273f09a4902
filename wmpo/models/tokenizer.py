"""Action tokenizer: env actions <-> [-1, 1] (store q01/q99) <-> 256 uniform bins.

normalize:   x -> clip(2 (x - q01) / (q99 - q01) - 1, -1, 1); a constant dimension (q99 - q01 <= 1e-8)
             normalizes to 0 and unnormalizes to q01, exactly as the world model's normalizer
             (wmpo.data.clips.normalize_actions) does
tokenize:    [-1, 1] -> bin index floor((u + 1) / 2 * num_bins), clamped to [0, num_bins)
detokenize:  bin index -> bin centre -1 + (i + 0.5) * 2 / num_bins

A round trip normalized -> token -> centre is off by at most half a bin (1 / num_bins).
Every method accepts numpy arrays or torch tensors (any device) and returns the same kind.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


class ActionTokenizer:
    """Per-dimension quantile normalization + uniform binning of actions [..., D]."""

    def __init__(self, q01: ArrayLike, q99: ArrayLike, num_bins: int = 256):
        q01 = np.asarray(q01.detach().cpu() if isinstance(q01, torch.Tensor) else q01, dtype=np.float64).reshape(-1)
        q99 = np.asarray(q99.detach().cpu() if isinstance(q99, torch.Tensor) else q99, dtype=np.float64).reshape(-1)
        if q01.shape != q99.shape:
            raise ValueError(f"q99: expected shape {q01.shape} (same as q01), got {q99.shape}")
        if num_bins < 2:
            raise ValueError(f"num_bins: expected >= 2, got {num_bins}")
        self.q01 = q01
        self.q99 = q99
        self.num_bins = int(num_bins)
        # a constant dimension (q99 == q01) normalizes to 0 (not -1) and unnormalizes to q01
        self._varies = q99 - q01 > 1e-8
        self._span = np.where(self._varies, q99 - q01, 1.0)
        self._torch_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def action_dim(self) -> int:
        return int(self.q01.shape[0])

    @property
    def bin_width(self) -> float:
        return 2.0 / self.num_bins

    def _check_dim(self, name: str, x: ArrayLike) -> None:
        if x.shape[-1] != self.action_dim:
            raise ValueError(f"{name}: expected shape [..., {self.action_dim}], got {tuple(x.shape)}")

    def _stats_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (q01, span, varies) as tensors of x's device and float dtype (cached)."""
        dt = x.dtype if x.is_floating_point() else torch.float32
        key = (x.device, dt)
        if key not in self._torch_cache:
            self._torch_cache[key] = (
                torch.as_tensor(self.q01, dtype=dt, device=x.device),
                torch.as_tensor(self._span, dtype=dt, device=x.device),
                torch.as_tensor(self._varies, device=x.device),
            )
        return self._torch_cache[key]

    # ------------------------------------------------------------------ env <-> [-1, 1]
    def normalize(self, actions: ArrayLike) -> ArrayLike:
        """env actions [..., D] -> [-1, 1] (clipped; constant dimensions -> 0)."""
        self._check_dim("actions", actions)
        if isinstance(actions, torch.Tensor):
            lo, span, varies = self._stats_like(actions)
            x = actions if actions.is_floating_point() else actions.float()
            out = (2.0 * (x - lo) / span - 1.0).clamp(-1.0, 1.0)
            return torch.where(varies, out, torch.zeros_like(out))
        x = np.asarray(actions)
        out = np.where(self._varies, np.clip(2.0 * (x - self.q01) / self._span - 1.0, -1.0, 1.0), 0.0)
        return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)

    def unnormalize(self, normalized: ArrayLike) -> ArrayLike:
        """[-1, 1] [..., D] -> env actions [q01, q99] (constant dimensions -> q01)."""
        self._check_dim("normalized", normalized)
        if isinstance(normalized, torch.Tensor):
            lo, span, varies = self._stats_like(normalized)
            x = normalized if normalized.is_floating_point() else normalized.float()
            return (x + 1.0) * 0.5 * torch.where(varies, span, torch.zeros_like(span)) + lo
        x = np.asarray(normalized)
        out = (x + 1.0) * 0.5 * np.where(self._varies, self._span, 0.0) + self.q01
        return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)

    # ------------------------------------------------------------------ [-1, 1] <-> bins
    def tokenize(self, normalized: ArrayLike) -> ArrayLike:
        """[-1, 1] values -> int64 bin indices in [0, num_bins)."""
        nb = self.num_bins
        if isinstance(normalized, torch.Tensor):
            u = normalized.float().clamp(-1.0, 1.0)
            return torch.floor((u + 1.0) * 0.5 * nb).clamp_(0, nb - 1).to(torch.int64)
        u = np.clip(np.asarray(normalized, dtype=np.float64), -1.0, 1.0)
        return np.clip(np.floor((u + 1.0) * 0.5 * nb), 0, nb - 1).astype(np.int64)

    def detokenize(self, tokens: ArrayLike) -> ArrayLike:
        """bin indices -> normalized bin centres in (-1, 1) (float32)."""
        w = self.bin_width
        if isinstance(tokens, torch.Tensor):
            return tokens.to(torch.float32) * w + (w * 0.5 - 1.0)
        return (np.asarray(tokens, dtype=np.float64) * w + (w * 0.5 - 1.0)).astype(np.float32)

    def encode(self, actions: ArrayLike) -> ArrayLike:
        """env actions -> tokens."""
        return self.tokenize(self.normalize(actions))

    def decode(self, tokens: ArrayLike) -> ArrayLike:
        """tokens -> env actions (bin centres, unnormalized)."""
        return self.unnormalize(self.detokenize(tokens))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"q01": self.q01.copy(), "q99": self.q99.copy(), "num_bins": self.num_bins}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        other = ActionTokenizer.from_state_dict(state)
        self.__dict__.update(other.__dict__)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ActionTokenizer":
        return cls(np.asarray(state["q01"]), np.asarray(state["q99"]), int(state.get("num_bins", 256)))

    @classmethod
    def from_stats(cls, stats: dict[str, Any], num_bins: int = 256) -> "ActionTokenizer":
        """From a store's action_stats() -> {"q01": [D], "q99": [D]}."""
        return cls(stats["q01"], stats["q99"], num_bins)

    def __repr__(self) -> str:
        return f"ActionTokenizer(action_dim={self.action_dim}, num_bins={self.num_bins})"
