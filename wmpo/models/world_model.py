"""Action-conditioned video DiT over VAE latents (paper section 3.2).

Tokens: patch-`patch` patches of every latent frame, rows ordered frame-major ([B, T, N, D] flattened to
[B*T*N, D]), so AdaLN modulation rows are per frame ([B*T, D]) and never expanded per token
(`wmpo.ops.adaln_modulate` / `gated_residual_adaln` with tokens_per_frame=N).

Blocks alternate spatial attention (within a frame) and temporal attention (across frames, frame-causal:
frame i attends to frames <= i of the same spatial token). Frame-level action control: per frame,
cond = timestep_embedding(t_frame) + action_embedding(action_frame); one linear maps SiLU(cond) to every
block's (shift, scale, gate) x (attention, MLP) and the final layer's (shift, scale). Update rule:
x = x + (gate_offset + alpha) * Block(LN(x) * (1 + gamma) + beta)  (paper: gate_offset 1).

Action statistics: the model reads actions normalized to [-1, 1] with the q01/q99 of the corpus it was
(pre)trained on. `action_stats` holds them; they are saved in `state()` / the checkpoint, reused when
fine-tuning, used by `wm-eval`, and the rollout engine maps a policy's tokens into this space with them.
Checkpoints written before the stats were saved fall back to the `action_stats.json` that `train-wm`
wrote beside them (`from_checkpoint`); without it `action_stats` is None and users of the stats refuse.

Context KV cache: context frames never attend to predicted frames, so their hidden states, and the
temporal keys/values they produce, do not depend on the predicted frames. `build_context_cache` runs the
context frames once; `forward_cached` runs only the K predicted frames, reading the cached context K/V.
The cache holds only K and V (not the qkv projection they are sliced from), in per-block buffers with
room for the K predicted frames: without autograd, each denoising step writes its frames' K/V into the
buffer in place instead of concatenating the cache again for every block at every step.

Few-step students (`wmpo distill-wm`, cfg.step_conditioned): cond also adds d_mlp(sinusoid(1000 d)) of the
Euler step d the frame is about to take (context frames: d = 0), so the cache is built as for the
teacher. `step_modulation` computes every step's modulation rows at once and `forward_patches_cached`
runs one step from patches to patches: the fused few-step path (wmpo.diffusion.fewstep, docs/fewstep.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from wmpo import ops as _ops
from wmpo.data.loader import check_action_stats
from wmpo.utils.checks import check_tensor


@dataclass
class WorldModelConfig:
    latent_channels: int = 4
    """VAE latent channels (SDXL VAE: 4)"""
    latent_size: int = 32
    """latent side h = w (256 px / 8)"""
    patch: int = 2
    """patch side in latent pixels"""
    hidden: int = 1152
    """transformer width D"""
    spatial_blocks: int = 28
    """spatial (within-frame) attention blocks"""
    temporal_blocks: int = 28
    """temporal (across-frame, frame-causal) attention blocks; interleaved with the spatial ones"""
    heads: int = 16
    """attention heads"""
    mlp_ratio: float = 4.0
    """MLP hidden = mlp_ratio * hidden"""
    num_context: int = 4
    """c: context (conditioning) frames per chunk"""
    chunk_len: int = 8
    """K: predicted frames per chunk (= the policy's action chunk length)"""
    action_dim: int = 7
    """action dimensions (normalized to [-1, 1])"""
    t_context: float = 0.05
    """noisy-frame conditioning: the flow time of context frames (paper: 50/1000)"""
    gate_offset: float = 1.0
    """residual gate = gate_offset + alpha (paper: 1 + alpha; 0 gives DiT adaLN-Zero)"""
    freq_dim: int = 256
    """sinusoidal timestep embedding size"""
    step_conditioned: bool = False
    """also read the Euler step size d per frame (a shortcut-model student of `wmpo distill-wm`); False: a
    plain flow model, which ignores any step size (it integrates its instantaneous velocity, the d -> 0 limit)"""
    delta_target: bool = False
    """generate each predicted frame as its latent's difference from the last context frame (added back after
    sampling; `generation_window`), so an unchanged scene is the zero target and only the change is learned;
    False: the frames themselves (the paper)"""

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2

    @property
    def window(self) -> int:
        return self.num_context + self.chunk_len


def generation_window(cfg, window: torch.Tensor) -> torch.Tensor:
    """A clean latent window [B, c + K, C, h, w] as the model generates it: unchanged, or with cfg.delta_target
    its K predicted frames as differences from the last context frame (the flow target of training,
    distillation and the diagnostics; WorldModelEnv adds the last context frame back after sampling)."""
    if not getattr(cfg, "delta_target", False):
        return window
    c = cfg.num_context
    return torch.cat([window[:, :c], window[:, c:] - window[:, c - 1:c]], 1)


def frame_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_cached: int = 0) -> torch.Tensor:
    """q [S, H, Tq, hd], k/v [S, H, num_cached + Tq, hd]; query i attends keys <= num_cached + i.

    The fused op `wmpo.ops.frame_causal_attention` (Triton short-sequence kernel on CUDA, SDPA with
    the frame-causal mask on CPU, same dispatch as the other ops: `wmpo.ops.reference_ops()` or
    WMPO_BACKEND=ref select the plain-PyTorch references of every op the model calls).
    """
    return _ops.frame_causal_attention(q, k, v, num_cached=num_cached)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t (flow time in [0, 1]) [...] -> sinusoidal [..., dim] of 1000 t."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Block(nn.Module):
    """Attention + MLP; `kind` is 'spatial' or 'temporal'. Modulation comes from the model (per frame)."""

    def __init__(self, cfg: WorldModelConfig, kind: str):
        super().__init__()
        D = cfg.hidden
        self.kind = kind
        self.heads = cfg.heads
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        hid = int(D * cfg.mlp_ratio)
        self.fc1 = nn.Linear(D, hid)
        self.fc2 = nn.Linear(hid, D)

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class WorldModel(nn.Module):
    """forward(x_t [B,T,C,h,w], t_frames [B,T], actions [B,T,A]) -> velocity [B,T,C,h,w]."""

    def __init__(self, cfg: WorldModelConfig | None = None):
        super().__init__()
        cfg = cfg or WorldModelConfig()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden: expected a multiple of heads={cfg.heads}, got {cfg.hidden}")
        if cfg.latent_size % cfg.patch:
            raise ValueError(f"latent_size: expected a multiple of patch={cfg.patch}, got {cfg.latent_size}")
        self.cfg = cfg
        self.action_stats: dict[str, np.ndarray] | None = None  # q01/q99 [action_dim] of its training actions
        self.grad_checkpointing = False  # training: recompute each block's activations in backward (memory)
        D, p, C = cfg.hidden, cfg.patch, cfg.latent_channels
        self.patch_embed = nn.Linear(C * p * p, D)
        self.pos_spatial = nn.Parameter(torch.zeros(cfg.tokens_per_frame, D))
        self.pos_temporal = nn.Parameter(torch.zeros(cfg.window, D))
        self.t_mlp = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.a_mlp = nn.Sequential(nn.Linear(cfg.action_dim, D), nn.SiLU(), nn.Linear(D, D))
        # step-size embedding (students only); its last layer starts at zero, so a student initialised from
        # its teacher's weights is exactly the teacher at every step size
        self.d_mlp = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(), nn.Linear(D, D)) if cfg.step_conditioned else None
        kinds: list[str] = []
        for i in range(max(cfg.spatial_blocks, cfg.temporal_blocks)):
            if i < cfg.spatial_blocks:
                kinds.append("spatial")
            if i < cfg.temporal_blocks:
                kinds.append("temporal")
        self.blocks = nn.ModuleList(_Block(cfg, k) for k in kinds)
        self.temporal_index = [i for i, k in enumerate(kinds) if k == "temporal"]
        # one matmul for all blocks' (shift1, scale1, gate1, shift2, scale2, gate2) + final (shift, scale)
        self.modulation = nn.Linear(D, len(kinds) * 6 * D + 2 * D)
        self.final = nn.Linear(D, C * p * p)
        self.attention = frame_causal_attention  # swap point (q, k, v, num_cached) -> out
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_spatial, std=0.02)
        nn.init.normal_(self.pos_temporal, std=0.02)
        nn.init.normal_(self.t_mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_mlp[2].weight, std=0.02)
        if self.d_mlp is not None:
            nn.init.normal_(self.d_mlp[0].weight, std=0.02)
            nn.init.zeros_(self.d_mlp[2].weight)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    # ------------------------------------------------------------------ pieces
    def _check(self, x_t: torch.Tensor, t_frames: torch.Tensor, actions: torch.Tensor, T: int | None = None) -> None:
        c = self.cfg
        check_tensor("x_t", x_t, ndim=5, floating=True, shape=(None, T, c.latent_channels, c.latent_size, c.latent_size))
        B, T = x_t.shape[:2]
        check_tensor("t_frames", t_frames, shape=(B, T), floating=True)
        check_tensor("actions", actions, shape=(B, T, c.action_dim), floating=True)

    def _embed(self, x: torch.Tensor, t0: int) -> torch.Tensor:
        """latents [B,T,C,h,w] -> tokens [B*T*N, D] (with positions; temporal positions start at t0)."""
        B, T, C, h, w = x.shape
        p = self.cfg.patch
        x = x.reshape(B, T, C, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, T, -1, C * p * p)
        return self._embed_patches(x, B, T, t0)

    def _embed_patches(self, patches: torch.Tensor, B: int, T: int, t0: int) -> torch.Tensor:
        """patches [B*T*N, C*p*p] (or [B, T, N, C*p*p]; frame-major, as `wmpo.ops.flow_step_patchify` writes
        them) -> tokens [B*T*N, D]."""
        N = self.cfg.tokens_per_frame
        x = patches.reshape(B, T, N, -1).to(self.patch_embed.weight.dtype)
        tok = self.patch_embed(x) + self.pos_spatial + self.pos_temporal[t0:t0 + T].unsqueeze(1)
        return tok.reshape(B * T * N, -1)

    def _unembed(self, y: torch.Tensor, B: int, T: int) -> torch.Tensor:
        c = self.cfg
        p, C, g = c.patch, c.latent_channels, c.latent_size // c.patch
        y = y.reshape(B, T, g, g, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return y.reshape(B, T, C, g * p, g * p)

    def _modulation(self, t_frames: torch.Tensor, actions: torch.Tensor, dtype: torch.dtype,
                    step_size: torch.Tensor | None = None) -> torch.Tensor:
        """-> [B*T, L*6*D + 2*D]: per frame modulation rows for every block + the final layer."""
        emb = self.t_mlp(timestep_embedding(t_frames.reshape(-1), self.cfg.freq_dim).to(dtype))
        emb = emb + self.a_mlp(actions.reshape(-1, actions.shape[-1]).to(dtype))
        if self.d_mlp is not None:
            d = torch.zeros_like(t_frames) if step_size is None else step_size.expand_as(t_frames)
            emb = emb + self.d_mlp(timestep_embedding(d.reshape(-1), self.cfg.freq_dim).to(dtype))
        return self.modulation(F.silu(emb))

    def step_modulation(self, times: torch.Tensor, actions: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Every Euler step's per-frame modulation rows at once (the fused few-step path): times [S + 1] the
        step list (1 -> 0), actions [B, K, A] of the predicted frames -> [S, B*K, L*6*D + 2*D].

        Step i's frames are at t = times[i] with step size times[i] - times[i + 1]; one pass through the
        embedding MLPs (the action MLP once, not per step) and one batched matmul for all blocks and steps."""
        c = self.cfg
        check_tensor("times", times, ndim=1, floating=True)
        check_tensor("actions", actions, ndim=3, floating=True, shape=(None, None, c.action_dim))
        S, (B, K) = times.shape[0] - 1, actions.shape[:2]
        dtype = dtype or self.modulation.weight.dtype
        t_emb = self.t_mlp(timestep_embedding(times[:-1], c.freq_dim).to(dtype))  # [S, D]
        if self.d_mlp is not None:
            t_emb = t_emb + self.d_mlp(timestep_embedding(times[:-1] - times[1:], c.freq_dim).to(dtype))
        a_emb = self.a_mlp(actions.reshape(B * K, -1).to(dtype))  # [B*K, D]
        emb = F.silu(t_emb.unsqueeze(1) + a_emb.unsqueeze(0))  # [S, B*K, D]
        return self.modulation(emb.reshape(S * B * K, -1)).reshape(S, B * K, -1)

    def _attn(self, blk: _Block, h: torch.Tensor, B: int, T: int, past: tuple | None, keep_kv: bool,
              past_len: int = 0, reserve: int = 0):
        """h [B*T*N, D] -> (out [B*T*N, D], K/V cache buffers of this call's frames when keep_kv and temporal).

        past: (k_buf, v_buf) [B*N, H, >= past_len, hd] whose first past_len frames are the cached context.
        keep_kv: return new buffers [B*N, H, T + reserve, hd] holding only this call's K and V."""
        N, D, H = self.cfg.tokens_per_frame, self.cfg.hidden, blk.heads
        hd = D // H
        qkv = blk.qkv(h)
        kv_out = None
        if blk.kind == "spatial":
            qkv = qkv.reshape(B * T, N, 3, H, hd).permute(2, 0, 3, 1, 4)  # 3, B*T, H, N, hd
            o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            o = o.permute(0, 2, 1, 3).reshape(B * T * N, D)
        else:
            qkv = qkv.reshape(B, T, N, 3, H, hd).permute(3, 0, 2, 4, 1, 5).reshape(3, B * N, H, T, hd)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if keep_kv:  # K and V only, copied out of the qkv buffer (which would otherwise stay alive)
                kb = k.new_empty(B * N, H, T + reserve, hd)
                vb = v.new_empty(B * N, H, T + reserve, hd)
                kb[:, :, :T].copy_(k)
                vb[:, :, :T].copy_(v)
                kv_out = (kb, vb)
            nc = 0
            if past is not None:
                nc = past_len
                kb, vb = past
                if not torch.is_grad_enabled() and kb.shape[2] >= nc + T and kb.dtype == k.dtype:
                    kb[:, :, nc:nc + T].copy_(k)  # this step's frames, in place after the cached context
                    vb[:, :, nc:nc + T].copy_(v)
                    k, v = kb[:, :, :nc + T], vb[:, :, :nc + T]
                else:
                    k = torch.cat([kb[:, :, :nc].to(k.dtype), k], dim=2)
                    v = torch.cat([vb[:, :, :nc].to(v.dtype), v], dim=2)
            o = self.attention(q, k, v, nc)  # [B*N, H, T, hd]
            o = o.reshape(B, N, H, T, hd).permute(0, 3, 1, 2, 4).reshape(B * T * N, D)
        return blk.proj(o), kv_out

    def _run(self, x_t, t_frames, actions, t0: int, past: list | None, keep_kv: bool, reserve: int = 0,
             step_size: torch.Tensor | None = None):
        B, T = x_t.shape[:2]
        x = self._embed(x_t.to(self.patch_embed.weight.dtype), t0)
        out, kvs = self._trunk(x, self._modulation(t_frames, actions, x.dtype, step_size), B, T, t0, past, keep_kv, reserve)
        return self._unembed(out, B, T), kvs

    def _trunk(self, x, mod, B: int, T: int, t0: int, past: list | None, keep_kv: bool, reserve: int = 0):
        """Embedded tokens [B*T*N, D] + per-frame modulation rows [B*T, M] -> (final-layer patches
        [B*T*N, C*p*p], the K/V buffers when keep_kv)."""
        N, D = self.cfg.tokens_per_frame, self.cfg.hidden
        L = len(self.blocks)
        blk_mod = mod[:, : L * 6 * D].reshape(B * T, L, 6, D)
        fin = mod[:, L * 6 * D:].reshape(B * T, 2, D)
        h = _ops.adaln_modulate(x, blk_mod[:, 0, 0].contiguous(), blk_mod[:, 0, 1].contiguous(), tokens_per_frame=N)
        kvs: list = []
        ti = 0
        # activation checkpointing (training only): each block's activations are recomputed in backward
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled() and not keep_kv and past is None
        for i, blk in enumerate(self.blocks):
            p_kv = None
            if blk.kind == "temporal":
                p_kv = past[ti] if past is not None else None
                ti += 1
            if ckpt:
                x, h = torch.utils.checkpoint.checkpoint(self._block, i, x, h, blk_mod, fin, B, T, None, False, t0, reserve,
                                                         use_reentrant=False)[:2]
                continue
            x, h, kv = self._block(i, x, h, blk_mod, fin, B, T, p_kv, keep_kv, t0, reserve)
            if kv is not None:
                kvs.append(kv)
        return self.final(h), kvs

    def _block(self, i: int, x, h, blk_mod, fin, B: int, T: int, p_kv, keep_kv: bool, past_len: int, reserve: int):
        """Block i: attention, gated residual + next AdaLN, MLP, gated residual + next AdaLN -> (x, h, kv)."""
        blk, m, g0, tpf = self.blocks[i], blk_mod[:, i], self.cfg.gate_offset, self.cfg.tokens_per_frame
        y, kv = self._attn(blk, h, B, T, p_kv, keep_kv, past_len=past_len, reserve=reserve)
        x, h = _ops.gated_residual_adaln(x, y, (m[:, 2] + g0).contiguous(), m[:, 3].contiguous(), m[:, 4].contiguous(),
                                         tokens_per_frame=tpf)
        y = blk.mlp(h)
        if i + 1 < len(self.blocks):
            nshift, nscale = blk_mod[:, i + 1, 0], blk_mod[:, i + 1, 1]
        else:
            nshift, nscale = fin[:, 0], fin[:, 1]
        x, h = _ops.gated_residual_adaln(x, y, (m[:, 5] + g0).contiguous(), nshift.contiguous(), nscale.contiguous(),
                                         tokens_per_frame=tpf)
        return x, h, kv

    # ------------------------------------------------------------------ public
    def forward(self, x_t: torch.Tensor, t_frames: torch.Tensor, actions: torch.Tensor,
                step_size: torch.Tensor | float | None = None) -> torch.Tensor:
        """Uncached: all T <= c + K frames at once (frame-causal). -> velocity [B, T, C, h, w].

        step_size: the Euler step d each frame is about to take (0-d, [B] or [B, T]; None: 0, the
        instantaneous velocity); read by step-conditioned students only (cfg.step_conditioned)."""
        self._check(x_t, t_frames, actions)
        if x_t.shape[1] > self.cfg.window:
            raise ValueError(f"x_t: expected at most {self.cfg.window} frames, got {x_t.shape[1]}")
        return self._run(x_t, t_frames, actions, 0, None, False, step_size=self._step_size(step_size, t_frames))[0]

    def _step_size(self, step_size, t_frames: torch.Tensor) -> torch.Tensor | None:
        """step_size (None, float, 0-d, [B] or [B, T]) -> [B, T] fp32 on t_frames' device, or None (unused)."""
        if step_size is None or self.d_mlp is None:
            return None
        B, T = t_frames.shape
        d = torch.as_tensor(step_size, dtype=torch.float32, device=t_frames.device)
        if d.dim() == 1:
            check_tensor("step_size", d, shape=(B,))
            d = d.view(B, 1)
        elif d.dim() == 2:
            check_tensor("step_size", d, shape=(B, T))
        elif d.dim() != 0:
            raise ValueError(f"step_size: expected a float, a 0-d tensor, [B] or [B, T], got shape {tuple(d.shape)}")
        return d.expand(B, T)

    def build_context_cache(self, context_latents: torch.Tensor, context_actions: torch.Tensor,
                            t_context: float | torch.Tensor | None = None, reserve: int | None = None) -> dict[str, Any]:
        """Run the c context frames once (at flow time t_context); keep every temporal block's K/V.

        reserve: predicted frames the buffers leave room for (default K = chunk_len)."""
        c = self.cfg.num_context
        check_tensor("context_latents", context_latents, ndim=5, floating=True,
                     shape=(None, c, self.cfg.latent_channels, self.cfg.latent_size, self.cfg.latent_size))
        B = context_latents.shape[0]
        check_tensor("context_actions", context_actions, shape=(B, c, self.cfg.action_dim), floating=True)
        tc = self.cfg.t_context if t_context is None else t_context
        t_frames = torch.as_tensor(tc, dtype=torch.float32, device=context_latents.device).expand(B, c)
        reserve = self.cfg.chunk_len if reserve is None else int(reserve)
        _, kvs = self._run(context_latents, t_frames, context_actions, 0, None, True, reserve=reserve)
        return {"kv": kvs, "num_context": c, "batch": B}

    def forward_cached(self, x_t: torch.Tensor, t_frames: torch.Tensor, actions: torch.Tensor, cache: dict[str, Any],
                       step_size: torch.Tensor | float | None = None) -> torch.Tensor:
        """Only the predicted frames (x_t [B, K', ...], K' <= K), reading the cached context K/V (step_size: forward)."""
        self._check(x_t, t_frames, actions)
        if x_t.shape[0] != cache["batch"]:
            raise ValueError(f"x_t: expected batch {cache['batch']} (the cache's), got {x_t.shape[0]}")
        return self._run(x_t, t_frames, actions, cache["num_context"], cache["kv"], False,
                         step_size=self._step_size(step_size, t_frames))[0]

    def forward_patches_cached(self, patches: torch.Tensor, modulation: torch.Tensor, cache: dict[str, Any]) -> torch.Tensor:
        """The fused few-step path's denoiser call: patches [B*K*N, C*p*p] of the predicted frames (as
        `wmpo.ops.flow_step_patchify` returns them) and their modulation rows [B*K, M] (one step of
        `step_modulation`) -> the velocity as patches [B*K*N, C*p*p] (not unpatchified), reading the cache."""
        B, N = cache["batch"], self.cfg.tokens_per_frame
        P = self.cfg.latent_channels * self.cfg.patch ** 2
        check_tensor("patches", patches, ndim=2, floating=True, shape=(None, P))
        if patches.shape[0] % (B * N):
            raise ValueError(f"patches: expected a multiple of {B * N} rows (batch x tokens per frame), got {patches.shape[0]}")
        T = patches.shape[0] // (B * N)
        check_tensor("modulation", modulation, ndim=2, shape=(B * T, self.modulation.out_features))
        x = self._embed_patches(patches, B, T, cache["num_context"])
        return self._trunk(x, modulation.to(x.dtype), B, T, cache["num_context"], cache["kv"], False)[0]

    # ------------------------------------------------------------------ checkpoints
    def set_action_stats(self, stats: dict | None) -> None:
        """Set (validated against cfg.action_dim) or clear the q01/q99 the model's actions are normalized with."""
        self.action_stats = None if stats is None else check_action_stats("action_stats", stats, self.cfg.action_dim)

    def state(self) -> dict:
        stats = None if self.action_stats is None else {k: v.tolist() for k, v in self.action_stats.items()}
        return {"config": asdict(self.cfg), "state_dict": self.state_dict(), "action_stats": stats}

    @classmethod
    def from_state(cls, state: dict) -> "WorldModel":
        m = cls(WorldModelConfig(**state["config"]))
        m.load_state_dict(state["state_dict"])
        m.set_action_stats(state.get("action_stats"))
        return m

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu", ema: bool = True) -> "WorldModel":
        """Load a world_model.pt (a train-wm checkpoint or a bare `state()`); see the module docstring on
        `action_stats` for checkpoints that predate them."""
        from wmpo.utils.checkpoint import build_from_checkpoint

        def build(st: dict) -> "WorldModel":
            if "model" in st:
                m = st["model"]
                if ema and st.get("ema") is not None:
                    m = {**m, "state_dict": st["ema"]}
                st = m
            return cls.from_state(st)

        model = build_from_checkpoint(path, build, "a world-model checkpoint (world_model.pt from `wmpo train-wm`)",
                                      map_location)
        if model.action_stats is None:
            model.set_action_stats(legacy_action_stats(path))
        return model


def legacy_action_stats(checkpoint: str | Path) -> dict | None:
    """The action_stats.json `train-wm` wrote beside a checkpoint before the stats were saved inside it
    (None when there is none). Warns once: such a checkpoint's stats cannot be checked against its weights."""
    side = Path(checkpoint).with_name("action_stats.json")
    if not side.is_file():
        return None
    import json

    from wmpo.utils.logging import warn_once

    try:
        stats = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{side}: expected the q01/q99 JSON written by train-wm, could not read it ({e})") from None
    warn_once(f"legacy_action_stats:{side}", f"{checkpoint}: no action statistics inside the checkpoint (written by an "
              f"older train-wm); using {side}")
    return check_action_stats(str(side), stats)


def world_model_flops(cfg: WorldModelConfig, batch: int, frames: int, kv_frames: int | None = None) -> float:
    """Analytic forward FLOPs (2 per MAC) for `frames` query frames attending to `kv_frames` temporal keys
    (kv_frames = cached context + frames; default frames). Causal temporal attention counted as computed (full)."""
    D, N = cfg.hidden, cfg.tokens_per_frame
    kvf = frames if kv_frames is None else kv_frames
    R = batch * frames * N
    hid = int(D * cfg.mlp_ratio)
    per_block = 2 * R * D * 3 * D + 2 * R * D * D + 2 * R * D * hid * 2
    spatial_attn = 4 * R * N * D
    temporal_attn = 4 * R * kvf * D
    L = cfg.spatial_blocks + cfg.temporal_blocks
    total = L * per_block + cfg.spatial_blocks * spatial_attn + cfg.temporal_blocks * temporal_attn
    p2c = cfg.patch * cfg.patch * cfg.latent_channels
    total += 2 * R * p2c * D * 2  # patch embed + final
    Fr = batch * frames
    total += 2 * Fr * D * (L * 6 * D + 2 * D) + 2 * Fr * (cfg.freq_dim * D + D * D + cfg.action_dim * D + D * D)
    if cfg.step_conditioned:  # the step-size embedding MLP
        total += 2 * Fr * (cfg.freq_dim * D + D * D)
    return float(total)
