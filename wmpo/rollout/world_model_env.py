"""A batched, on-device world-model environment: reset(first_frames) then step(action chunks) -> frames.

Usable without the rest of wmpo: it needs only a VAE with encode/decode and a WorldModel.
Context (decided once, same in training and rollout): context latents are noised to t_context with fresh
noise every chunk (exactly the training distribution of `wmpo.ops.noisy_context`) and carry the t_context
timestep embedding. At reset the context is the first frame's latent repeated c times with zero actions
(training windows include episode starts padded the same way). After each chunk, the last c latents
(clean, as generated) and their actions become the next context.
"""
from __future__ import annotations

from typing import Sequence

import torch

from wmpo.diffusion.fewstep import FUSED_MAX_STEPS, fused_euler_sample_cached
from wmpo.diffusion.sampler import FlowMatchEulerSampler
from wmpo.utils.checks import check_tensor
from wmpo.utils.device import module_device


class WorldModelEnv:
    def __init__(self, vae, world_model, *, steps: int | Sequence[float] = 30, num_context: int | None = None,
                 t_context: float | None = None, device: torch.device | str | None = None, use_cache: bool = True,
                 noise_context: bool = True, decode_last_only: bool = False, generator: torch.Generator | None = None,
                 vae_max_batch: int | None = None, fused_max_steps: int | None = None):
        """steps: number of Euler steps or an explicit list of times 1 -> 0 (FlowMatchEulerSampler.set_timesteps).
        t_context: flow time of context frames (values > 1 are read as diffusion steps out of 1000, e.g. 50 -> 0.05);
        default the model's.
        fused_max_steps: with the cache, step counts up to this take the fused few-step path
        (wmpo.diffusion.fewstep; default FUSED_MAX_STEPS; 0: never). Step-conditioned students get each
        step's size (FlowMatchEulerSampler.step_size) on both paths."""
        self.vae, self.wm = vae, world_model
        cfg = world_model.cfg
        self.c = int(num_context if num_context is not None else cfg.num_context)
        if self.c != cfg.num_context:
            raise ValueError(f"num_context: expected {cfg.num_context} (the world model's), got {self.c}")
        tc = cfg.t_context if t_context is None else float(t_context)
        self.t_context = tc / 1000.0 if tc > 1.0 else tc
        self.device = torch.device(device) if device is not None else (module_device(world_model) or torch.device("cpu"))
        self.dtype = torch.float32  # latents, context and Euler state stay fp32 (the model casts its inputs)
        self.K, self.A = cfg.chunk_len, cfg.action_dim
        self.C, self.h = cfg.latent_channels, cfg.latent_size
        self.sampler = FlowMatchEulerSampler()
        self.sampler.set_timesteps(steps, self.device)
        self.use_cache, self.noise_context = use_cache, noise_context
        self.delta_target = bool(getattr(cfg, "delta_target", False))  # WorldModelConfig.delta_target
        self.decode_last_only = decode_last_only
        self.generator = generator
        self.vae_max_batch = vae_max_batch
        self.fused_max_steps = FUSED_MAX_STEPS if fused_max_steps is None else int(fused_max_steps)
        self.ctx: torch.Tensor | None = None  # [B, c, C, h, w]
        self.ctx_actions: torch.Tensor | None = None  # [B, c, A]
        self._t_ctx = torch.full((), self.t_context, device=self.device)

    @property
    def action_stats(self) -> dict | None:
        """q01/q99 the world model's actions are normalized with (None: unknown); see wmpo.rollout.action_map."""
        return getattr(self.wm, "action_stats", None)

    @property
    def fused(self) -> bool:
        """True when the world model offers the fused few-step path (step_modulation, forward_patches_cached)."""
        return hasattr(self.wm, "forward_patches_cached") and self.fused_max_steps > 0

    @property
    def batch_size(self) -> int:
        return 0 if self.ctx is None else self.ctx.shape[0]

    # ------------------------------------------------------------------ resets
    def _encode_first(self, first_frames: torch.Tensor) -> torch.Tensor:
        check_tensor("first_frames", first_frames, ndim=4, floating=True)
        if first_frames.shape[1] != 3:
            raise ValueError(f"first_frames: expected [B, 3, H, W], got {tuple(first_frames.shape)}")
        with torch.no_grad():
            return self.vae.encode(first_frames.to(self.device), max_batch=self.vae_max_batch).to(self.dtype)

    def reset(self, first_frames: torch.Tensor, instructions=None) -> None:
        """first_frames float [B, 3, H, W] in [-1, 1]; allocates the context buffers (instructions are ignored)."""
        z = self._encode_first(first_frames)
        B = z.shape[0]
        self.ctx = z.unsqueeze(1).expand(B, self.c, *z.shape[1:]).contiguous()
        self.ctx_actions = torch.zeros(B, self.c, self.A, device=self.device, dtype=self.dtype)

    def reset_slots(self, mask: torch.Tensor, first_frames: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Replace only rows where mask [B] is True. Without `rows` every row is VAE-encoded and the
        masked ones kept (no host sync: usable inside a captured graph); with `rows` (device int64,
        the indices where mask is True, known to the host loop that refills slots) only those frames
        are encoded and written in place (same buffers, so a captured chunk stays valid)."""
        if self.ctx is None:
            raise RuntimeError("reset_slots: call reset(first_frames) first to allocate the batch")
        check_tensor("mask", mask, shape=(self.batch_size,), dtype=torch.bool)
        if rows is not None:
            check_tensor("rows", rows, ndim=1, dtype=torch.int64)
            if rows.numel() == 0:
                return
            z = self._encode_first(first_frames[rows.to(first_frames.device)])
            r = rows.to(self.device)
            self.ctx.index_copy_(0, r, z.unsqueeze(1).expand(z.shape[0], self.c, *z.shape[1:]))
            self.ctx_actions.index_fill_(0, r, 0)
            return
        z = self._encode_first(first_frames)
        m = mask.to(self.device)
        self.ctx.copy_(torch.where(m.view(-1, 1, 1, 1, 1), z.unsqueeze(1), self.ctx))
        self.ctx_actions.masked_fill_(m.view(-1, 1, 1), 0)

    # ------------------------------------------------------------------ stepping
    def _noise(self, shape) -> torch.Tensor:
        return torch.randn(shape, device=self.device, dtype=self.dtype, generator=self.generator)

    @torch.no_grad()
    def step_latents(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [B, K, A] normalized -> the K new latents [B, K, C, h, w]; advances the context."""
        if self.ctx is None:
            raise RuntimeError("step: call reset(first_frames) first")
        B = self.batch_size
        check_tensor("actions", actions, shape=(B, self.K, self.A), floating=True)
        act = actions.to(self.device, torch.float32)
        ctx = self.ctx
        if self.noise_context:
            tc = self.t_context
            ctx = ((1 - tc) * ctx.float() + tc * self._noise(ctx.shape).float()).to(self.dtype)
        x = self._noise((B, self.K, self.C, self.h, self.h))
        sampler = self.sampler
        sampler.num_context = 0 if self.use_cache else self.c  # the uncached path carries the context frames
        ts = sampler.timesteps
        if self.use_cache:
            cache = self.wm.build_context_cache(ctx, self.ctx_actions, self._t_ctx)
            if self.fused and len(sampler) <= self.fused_max_steps:
                out = fused_euler_sample_cached(self.wm, x, ts, act, cache)
            else:
                for i in range(len(sampler)):
                    v = self.wm.forward_cached(x, ts[i].expand(B, self.K), act, cache, step_size=sampler.step_size(i))
                    x = sampler.step(v.to(x.dtype), i, x)
                out = x
        else:
            full = torch.cat([ctx, x], 1)
            acts = torch.cat([self.ctx_actions, act], 1)
            tf = torch.cat([self._t_ctx.expand(B, self.c), ts[0].expand(B, self.K)], 1).clone()
            for i in range(len(sampler)):
                tf[:, self.c:] = ts[i]
                d = torch.cat([torch.zeros_like(tf[:, :self.c]), sampler.step_size(i).expand(B, self.K)], 1)
                v = self.wm(full, tf, acts, step_size=d).to(full.dtype)
                full = sampler.step(v, i, full)
            out = full[:, self.c:]
        if self.delta_target:  # the model generated differences from the last (clean) context frame
            out = out + self.ctx[:, -1:].to(out.dtype)
        # clip-level autoregression: the last c frames (and their actions) become the next context
        self.ctx.copy_(torch.cat([self.ctx, out], 1)[:, -self.c:])
        self.ctx_actions.copy_(torch.cat([self.ctx_actions, act], 1)[:, -self.c:])
        return out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [..., C, h, w] -> frames float [..., 3, H, W] in [-1, 1] (clamped)."""
        return self.vae.decode(latents, max_batch=self.vae_max_batch).clamp_(-1, 1)

    def step(self, actions: torch.Tensor, decode: bool = True, last_only: bool | None = None) -> torch.Tensor:
        """actions [B, K, A] in [-1, 1] -> frames [B, K, 3, H, W] (decode=True; only [B, 1, ...] the last one when
        last_only) or latents [B, K, C, h, w] (decode=False)."""
        lat = self.step_latents(actions)
        if not decode:
            return lat
        last_only = self.decode_last_only if last_only is None else last_only
        return self.decode(lat[:, -1:] if last_only else lat)
