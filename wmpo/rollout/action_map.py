"""Policy action tokens -> the world model's normalized actions.

The policy's tokenizer normalizes env-space actions with its q01/q99 (the demonstrations it was trained
on); the world model normalizes them with its own (its training corpus, e.g. a multi-task pretraining
corpus). In imagination a token is decoded to its bin centre u in the tokenizer's [-1, 1], taken to env
space with the tokenizer's statistics, and normalized with the world model's:

    env  = (u + 1) / 2 * span_tok + q01_tok            (span = q99 - q01; 0 for a constant dimension)
    u_wm = clip(2 (env - q01_wm) / span_wm - 1, -1, 1)  (0 where the world model's dimension is constant)

per dimension one multiply-add and a clip, u_wm = clip(scale * u + offset, -1, 1), on the device. With equal
statistics (and no constant dimension) the map is the identity and is skipped: the actions are the
tokenizer's bin centres, bit for bit. A constant dimension maps to 0 as in the world model's training.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wmpo.data.loader import check_action_stats

_CONSTANT = 1e-8  # q99 - q01 at or below this is a constant dimension (as in the normalizers)


class TokenActionMap:
    """tokens [..., D] -> the world model's normalized actions [..., D] (float32), see the module docstring."""

    def __init__(self, tokenizer: Any, world_model_stats: dict | None):
        self.tokenizer = tokenizer
        self.identity = world_model_stats is None
        if self.identity:
            return
        D = int(tokenizer.action_dim)
        tok = check_action_stats("tokenizer", {"q01": tokenizer.q01, "q99": tokenizer.q99}, D)
        wm = check_action_stats("world model action_stats", world_model_stats, D)
        q_t, q_w = tok["q01"].astype(np.float64), wm["q01"].astype(np.float64)
        s_t = tok["q99"].astype(np.float64) - q_t
        s_w = wm["q99"].astype(np.float64) - q_w
        s_t = np.where(s_t > _CONSTANT, s_t, 0.0)
        varies = s_w > _CONSTANT
        s_w = np.where(varies, s_w, 1.0)
        self.scale = np.where(varies, s_t / s_w, 0.0)
        self.offset = np.where(varies, (s_t + 2.0 * (q_t - q_w)) / s_w - 1.0, 0.0)
        self.identity = bool(np.all(varies) and np.all(self.scale == 1.0) and np.all(self.offset == 0.0))
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        u = torch.as_tensor(self.tokenizer.detokenize(tokens)).float()
        if self.identity:
            return u
        if u.device not in self._cache:
            self._cache[u.device] = (torch.as_tensor(self.scale, dtype=torch.float32, device=u.device),
                                     torch.as_tensor(self.offset, dtype=torch.float32, device=u.device))
        scale, offset = self._cache[u.device]
        return torch.addcmul(offset, u, scale).clamp_(-1.0, 1.0)


def world_model_action_map(tokenizer: Any, wm_env: Any, chunk_len: int, action_dim: int) -> TokenActionMap:
    """The map from the policy's tokens into `wm_env`'s action space, after checking they fit together.

    wm_env declares its action space with `action_stats` (wmpo.rollout.world_model_env.WorldModelEnv: the
    world model's q01/q99) and its chunk length / action dimension with `K` / `A`. An env without an
    `action_stats` attribute takes the tokenizer's normalized actions as they are (identity). Raises
    ValueError when the chunk length or action dimension differ, or when the env declares statistics but
    has none (None) or the tokenizer has no q01/q99 to decode with.
    """
    env_K, env_A = getattr(wm_env, "K", None), getattr(wm_env, "A", None)
    if env_K is not None and int(env_K) != int(chunk_len):
        raise ValueError(f"world model: expected chunk_len {chunk_len} (the policy's), got {env_K}")
    if env_A is not None and int(env_A) != int(action_dim):
        raise ValueError(f"world model: expected action_dim {action_dim} (the policy's), got {env_A}")
    tok_D = getattr(tokenizer, "action_dim", None)
    if tok_D is not None and int(tok_D) != int(action_dim):
        raise ValueError(f"tokenizer: expected action_dim {action_dim} (the policy's), got {tok_D}")
    if not hasattr(wm_env, "action_stats"):
        return TokenActionMap(tokenizer, None)
    stats = wm_env.action_stats
    if stats is None:
        raise ValueError("world model: has no action statistics (q01/q99), so the policy's actions cannot be put in "
                         "its action space; load a checkpoint written by this train-wm, or set "
                         "world_model.set_action_stats({'q01': ..., 'q99': ...}) to the statistics it was trained with")
    if getattr(tokenizer, "q01", None) is None or getattr(tokenizer, "q99", None) is None:
        raise ValueError(f"tokenizer: expected an ActionTokenizer with q01/q99 statistics (to decode tokens to env "
                         f"actions for the world model), got {type(tokenizer).__name__}")
    return TokenActionMap(tokenizer, stats)
