"""Built-in VLA policy: a small OpenVLA-OFT-style model with discrete, parallel-decoded actions.

  frame [N, 3, H, W] in [-1, 1] --resize (device)--> ViT (transformers ViTModel, random init)
  instruction (UTF-8 bytes, 0 = pad)  --> byte embedding + a couple of transformer layers
  K*D learned action queries
  [image tokens; instruction tokens; action queries] -> bidirectional transformer (pad masked)
  -> query outputs -> LayerNorm -> shared Linear(hidden, 256) + per-token bias -> logits [N, K, D, 256]

All K*D action tokens come out of one forward pass. Log-probs and entropies go through
wmpo.ops.action_logprob; a chunk's log-prob is logp.sum((1, 2)) (paper eq. 3).
Implements wmpo.models.protocol.Policy.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wmpo import ops
from wmpo.models.tokenizer import ActionTokenizer
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint
from wmpo.utils.checks import check_tensor
from wmpo.utils.frames import resize, uint8_to_model
from wmpo.utils.logging import warn_once

PAD_TOKEN = 0  # instruction byte b is token b + 1
INSTR_VOCAB = 257


@dataclass
class PolicyConfig:
    chunk_len: int = 8
    """K, actions per chunk (paper: 8)"""
    action_dim: int = 7
    """D, action dimensions (delta pos 3, delta rot 3, gripper 1)"""
    num_bins: int = 256
    """bins per action dimension (paper: 256)"""
    image_size: int = 224
    """frames are resized on the device to image_size x image_size before the ViT"""
    patch_size: int = 16
    """ViT patch size"""
    hidden_size: int = 384
    """width of every transformer in the policy (ViT, instruction encoder, fusion)"""
    num_heads: int = 6
    """attention heads (hidden_size must be divisible by it)"""
    vision_layers: int = 8
    """ViT depth"""
    instr_layers: int = 2
    """instruction encoder depth"""
    fusion_layers: int = 4
    """depth of the bidirectional transformer over image + instruction + action-query tokens"""
    mlp_ratio: float = 4.0
    """MLP width / hidden_size"""
    dropout: float = 0.0
    """dropout in the instruction encoder and fusion blocks (GRPO updates run the policy in eval mode by default)"""
    max_instr_len: int = 64
    """instruction bytes kept (longer ones are truncated with a warning)"""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicyConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _Block(nn.Module):
    """Pre-norm transformer block (SDPA attention with an optional key padding mask)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"num_heads: expected a divisor of hidden_size {dim}, got {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_drop = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        N, S, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(N, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(N, S, C)))
        return x + self.drop(self.mlp(self.norm2(x)))


def _sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """2D sin-cos position embedding [1 + grid*grid, dim] (row 0, the CLS token, is zero)."""
    q = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float64) / max(1, q)))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = [f(c.reshape(-1, 1) * omega) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    emb = torch.cat(parts, dim=1)
    emb = torch.cat([emb, torch.zeros(emb.shape[0], dim - emb.shape[1], dtype=emb.dtype)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb]).float()


def _key_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid [N, S] bool -> SDPA boolean mask [N, 1, 1, S] (True = attend)."""
    return valid[:, None, None, :]


class VLAPolicy(nn.Module):
    """OpenVLA-OFT-style VLA with K*D parallel-decoded 256-bin action tokens (see module docstring)."""

    def __init__(self, cfg: PolicyConfig | None = None):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        cfg = cfg or PolicyConfig()
        self.cfg = cfg
        self.chunk_len = int(cfg.chunk_len)
        self.action_dim = int(cfg.action_dim)
        self.num_bins = int(cfg.num_bins)
        H = cfg.hidden_size
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size: expected a multiple of patch_size {cfg.patch_size}, got {cfg.image_size}")
        vit_cfg = ViTConfig(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_channels=3,
            hidden_size=H,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=int(H * cfg.mlp_ratio),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        vit_cfg._attn_implementation = "sdpa"
        self.vision = ViTModel(vit_cfg, add_pooling_layer=False)
        with torch.no_grad():  # fixed-pattern init: position is readable from the first step
            self.vision.embeddings.position_embeddings.copy_(_sincos_2d(cfg.image_size // cfg.patch_size, H)[None])
        self.instr_embed = nn.Embedding(INSTR_VOCAB, H, padding_idx=PAD_TOKEN)
        self.instr_pos = nn.Parameter(torch.zeros(1, cfg.max_instr_len, H))
        self.instr_blocks = nn.ModuleList(_Block(H, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.instr_layers))
        n_q = self.chunk_len * self.action_dim
        self.queries = nn.Parameter(torch.zeros(1, n_q, H))
        # type embeddings: 0 image, 1 instruction, 2 action query
        self.type_embed = nn.Parameter(torch.zeros(3, H))
        self.fusion = nn.ModuleList(_Block(H, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.fusion_layers))
        self.head_norm = nn.LayerNorm(H)
        self.head = nn.Linear(H, self.num_bins)
        self.head_bias = nn.Parameter(torch.zeros(n_q, self.num_bins))  # per action token
        nn.init.trunc_normal_(self.instr_pos, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        nn.init.trunc_normal_(self.instr_embed.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    # ------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def encode_instructions(self, instructions: list[str], device: torch.device | None = None) -> torch.Tensor:
        """list of N strings -> int64 [N, max_instr_len]: UTF-8 byte + 1, 0-padded (no downloaded tokenizer)."""
        if isinstance(instructions, str):
            raise ValueError("instructions: expected a list of strings, got a single str")
        L = self.cfg.max_instr_len
        out = np.zeros((len(instructions), L), dtype=np.int64)
        for i, s in enumerate(instructions):
            b = np.frombuffer(str(s).encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1
            if len(b) > L:
                warn_once("wmpo.policy.instr_trunc", f"instruction longer than max_instr_len={L} bytes is truncated: {s!r}")
                b = b[:L]
            out[i, : len(b)] = b
        return torch.from_numpy(out).to(device if device is not None else self.device)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """float [N, 3, H, W] in [-1, 1] (or uint8 [N, H, W, 3]) -> float [N, 3, S, S] at image_size."""
        if frames.dtype == torch.uint8:
            frames = uint8_to_model(frames)
        check_tensor("frames", frames, ndim=4, floating=True)
        if frames.shape[1] != 3:
            raise ValueError(f"frames: expected shape [N, 3, H, W], got {tuple(frames.shape)}")
        x = frames.to(self.head.weight.dtype)
        return resize(x, self.cfg.image_size)

    # ------------------------------------------------------------------ forward
    def encode_instr_tokens(self, instr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """instr [N, L] -> (features [N, L, H], valid [N, L] bool)."""
        check_tensor("instr", instr, ndim=2, dtype=torch.int64)
        L = instr.shape[1]
        if L > self.cfg.max_instr_len:
            raise ValueError(f"instr: expected at most {self.cfg.max_instr_len} tokens, got shape {tuple(instr.shape)}")
        valid = instr != PAD_TOKEN
        # an empty instruction still needs one key to attend to: let the first position be valid
        valid = valid.clone()
        valid[:, 0] = True
        x = self.instr_embed(instr) + self.instr_pos[:, :L]
        mask = _key_mask(valid)
        for blk in self.instr_blocks:
            x = blk(x, mask)
        return x, valid

    def action_logits(self, frames: torch.Tensor, instr: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W], instr [N, L] -> logits [N, K, D, num_bins] (one pass, float32)."""
        x = self.preprocess(frames)
        N = x.shape[0]
        if instr.shape[0] != N:
            raise ValueError(f"instr: expected {N} rows (one per frame), got shape {tuple(instr.shape)}")
        img = self.vision(pixel_values=x).last_hidden_state  # [N, 1 + P, H]
        txt, txt_valid = self.encode_instr_tokens(instr.to(x.device))
        q = self.queries.expand(N, -1, -1)
        seq = torch.cat([img + self.type_embed[0], txt + self.type_embed[1], q + self.type_embed[2]], dim=1)
        valid = torch.cat(
            [torch.ones(N, img.shape[1], dtype=torch.bool, device=x.device), txt_valid, torch.ones(N, q.shape[1], dtype=torch.bool, device=x.device)],
            dim=1,
        )
        mask = _key_mask(valid)
        for blk in self.fusion:
            seq = blk(seq, mask)
        h = self.head_norm(seq[:, -q.shape[1] :])
        logits = self.head(h) + self.head_bias
        return logits.float().view(N, self.chunk_len, self.action_dim, self.num_bins)

    def forward(self, frames: torch.Tensor, instr: torch.Tensor) -> torch.Tensor:
        return self.action_logits(frames, instr)

    # ------------------------------------------------------------------ protocol
    @torch.no_grad()
    def sample(self, frames: torch.Tensor, instr: torch.Tensor, temperature: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (tokens int64 [N, K, D], logp [N, K, D]); Gumbel-max on the device; greedy if temperature is None/0."""
        logits = self.action_logits(frames, instr)
        return sample_from_logits(logits, temperature)

    def log_prob(
        self, frames: torch.Tensor, instr: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logp [N, K, D], entropy [N, K, D]) of `tokens` under softmax(logits / temperature), differentiable."""
        check_tensor("tokens", tokens, dtype=torch.int64, shape=(frames.shape[0], self.chunk_len, self.action_dim))
        if not temperature or temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        logits = self.action_logits(frames, instr)
        return ops.action_logprob(logits, tokens.to(logits.device), temperature=float(temperature))


def sample_from_logits(logits: torch.Tensor, temperature: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., B] -> (tokens int64 [...], logp under the temperature-scaled softmax; T=1 when greedy)."""
    if temperature is None or temperature == 0:
        tokens = logits.argmax(-1)
        logp, _ = ops.action_logprob(logits, tokens, temperature=1.0)
        return tokens, logp
    if temperature < 0:
        raise ValueError(f"temperature: expected None, 0 or > 0, got {temperature}")
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-10, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    tokens = (logits.float() / temperature + gumbel).argmax(-1)
    logp, _ = ops.action_logprob(logits, tokens, temperature=float(temperature))
    return tokens, logp


# ---------------------------------------------------------------------- augmentation
def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop as pad-and-crop (DrQ style): translate each sample by up to `pad` pixels, edges replicated.

    x: float [N, ..., 3, H, W]; all frames of one sample (leading dims after N) share one shift.
    Scale is unchanged, so inference needs no matching centre crop.
    """
    if pad <= 0:
        return x
    N = x.shape[0]
    H, W = x.shape[-2:]
    flat = x.reshape(N, -1, H, W)
    shift = torch.randint(-pad, pad + 1, (N, 2), device=x.device, generator=generator).to(torch.float32)
    theta = torch.zeros(N, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shift[:, 0] * 2.0 / W
    theta[:, 1, 2] = shift[:, 1] * 2.0 / H
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat.float(), grid, mode="nearest", padding_mode="border", align_corners=False)
    return out.to(x.dtype).reshape(x.shape)


# ---------------------------------------------------------------------- env adapter
def as_env_policy(
    policy: VLAPolicy, tokenizer: ActionTokenizer, temperature: float | None = None, device: torch.device | str | None = None
) -> Callable[[np.ndarray, list[str]], np.ndarray]:
    """-> fn(frames uint8 [N, H, W, 3], instructions list[str]) -> env-space actions float32 [N, K, D].

    For the real-simulator collection / evaluation code. Greedy when temperature is None/0.
    """
    dev = torch.device(device) if device is not None else policy.device
    policy.to(dev).eval()
    cache: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.no_grad()
    def act(frames: np.ndarray, instructions: list[str] | str) -> np.ndarray:
        f = torch.as_tensor(np.asarray(frames))
        if f.dim() == 3:
            f = f[None]
        check_tensor("frames", f, ndim=4, dtype=torch.uint8)
        if f.shape[-1] != 3:
            raise ValueError(f"frames: expected uint8 [N, H, W, 3], got {tuple(f.shape)}")
        n = f.shape[0]
        instr_list = [instructions] * n if isinstance(instructions, str) else list(instructions)
        if len(instr_list) == 1 and n > 1:
            instr_list = instr_list * n
        if len(instr_list) != n:
            raise ValueError(f"instructions: expected {n} strings, got {len(instr_list)}")
        key = tuple(instr_list)
        if key not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[key] = policy.encode_instructions(instr_list, device=dev)
        x = uint8_to_model(f.to(dev))
        tokens, _ = policy.sample(x, cache[key], temperature)
        return np.asarray(tokenizer.decode(tokens).float().cpu().numpy(), dtype=np.float32)

    return act


# ---------------------------------------------------------------------- checkpoints
def save_policy(path: str | os.PathLike, policy: VLAPolicy, tokenizer: ActionTokenizer, cfg: PolicyConfig | None = None, **extra: Any) -> None:
    """Atomically write {config, policy weights, tokenizer stats} (+ `extra`) to `path`."""
    cfg = cfg or policy.cfg
    state = {"kind": "wmpo.vla_policy", "config": asdict(cfg), "policy": policy.state_dict(), "tokenizer": tokenizer.state_dict()}
    state.update(extra)
    save_checkpoint(path, state)


def load_policy(path: str | os.PathLike, device: torch.device | str | None = "cpu") -> tuple[VLAPolicy, ActionTokenizer]:
    """-> (policy in eval mode on `device`, tokenizer) from a `save_policy` checkpoint."""
    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "wmpo.vla_policy":
        raise ValueError(f"path: expected a wmpo policy checkpoint (kind 'wmpo.vla_policy'), got kind {state.get('kind')!r} in {path}")
    policy = VLAPolicy(PolicyConfig.from_dict(state["config"]))
    policy.load_state_dict(state["policy"])
    policy.to(device if device is not None else "cpu").eval()
    return policy, ActionTokenizer.from_state_dict(state["tokenizer"])


def num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


__all__ = [
    "PolicyConfig",
    "VLAPolicy",
    "as_env_policy",
    "load_policy",
    "random_shift",
    "sample_from_logits",
    "save_policy",
    "num_params",
]

