"""Device-memory plan of an imagined rollout: what must fit, before the first chunk runs.

Counted (bytes; `GB` below is 1e9 bytes):

- weights: parameters x bytes per element of each model (bf16 for inference: 2; plan_for_env counts
  the models' actual dtypes: fp32 weights under bf16 autocast still take 4 bytes);
- KV cache: K and V only (not the qkv projection) of every temporal block, for the c context frames
  plus room for the K predicted frames, per slot: 2 x temporal_blocks x slots x N x (c + K) x D;
- denoiser step: the live activations of one block of one cached denoising step (tokens R =
  slots x K x N): residual, normalized input, qkv, attention output and the MLP hidden layer, plus
  every block's per-frame modulation rows (flash attention: no N x N scores);
- VAE decode: bytes per decoded frame (measured by bench/gpu_check.sh, else estimated from the
  decoder's widest activation) -> the largest decode batch that fits what is left;
- slot state: recorded frames (uint8), tokens and log-probs for the horizon, and one chunk of
  decoded frames.

`plan_rollout_memory` is pure arithmetic (unit-tested on the CPU); `models_param_counts` counts real
models; `MemoryPlan.table()` is what a run prints at start.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_GB = 1e9


@dataclass
class MemoryPlan:
    """Bytes per item (see the module docstring) and the VAE decode batch that fits the budget."""

    budget: int
    weights: dict[str, int]
    kv_cache: int
    denoiser_step: int
    slot_state: int
    vae_bytes_per_frame: int
    vae_decode_batch: int
    frames_per_chunk: int
    notes: list[str] = field(default_factory=list)

    @property
    def persistent(self) -> int:
        """Weights + slot state: held for the whole rollout."""
        return sum(self.weights.values()) + self.slot_state

    @property
    def peak_denoise(self) -> int:
        """Peak while denoising: persistent + KV cache + one denoiser step's activations."""
        return self.persistent + self.kv_cache + self.denoiser_step

    @property
    def peak_decode(self) -> int:
        """Peak while decoding (the KV cache is freed after the chunk's denoising)."""
        return self.persistent + self.vae_decode_batch * self.vae_bytes_per_frame

    @property
    def peak(self) -> int:
        return max(self.peak_denoise, self.peak_decode)

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget and self.vae_decode_batch >= 1

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(persistent=self.persistent, peak_denoise=self.peak_denoise, peak_decode=self.peak_decode,
                 peak=self.peak, fits=self.fits)
        return d

    def table(self) -> str:
        g = lambda b: f"{b / _GB:8.2f} GB"  # noqa: E731
        lines = [f"memory plan (budget {self.budget / _GB:.1f} GB):"]
        for k, v in self.weights.items():
            lines.append(f"  weights {k:<22s}{g(v)}")
        lines += [
            f"  slot state                    {g(self.slot_state)}",
            f"  KV cache (K/V only, c+K)      {g(self.kv_cache)}",
            f"  denoiser step activations     {g(self.denoiser_step)}",
            f"  VAE decode {self.vae_decode_batch:>5d} of {self.frames_per_chunk:<5d} frames"
            f"{g(self.vae_decode_batch * self.vae_bytes_per_frame)}  ({self.vae_bytes_per_frame / 1e6:.1f} MB/frame)",
            f"  peak (denoise / decode)       {g(self.peak_denoise)} / {g(self.peak_decode).strip()}"
            f"  -> {'fits' if self.fits else 'DOES NOT FIT'}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def vae_decode_bytes_per_frame_estimate(frame_size: int, first_block_channels: int, dtype_bytes: int) -> int:
    """Live activation bytes per frame of a VAE decode at full resolution: about four tensors of the
    widest (full-resolution) stage. SDXL at 256 px in fp32: 4 x 128 x 256 x 256 x 4 = 134 MB."""
    return 4 * first_block_channels * frame_size * frame_size * dtype_bytes


def plan_rollout_memory(
    *,
    slots: int,
    hidden: int,
    temporal_blocks: int,
    blocks: int,
    tokens_per_frame: int,
    num_context: int,
    chunk_len: int,
    mlp_ratio: float,
    frame_size: int,
    horizon_chunks: int,
    param_counts: dict[str, int],
    dtype: str = "bf16",
    budget_bytes: int = 80 * 10**9,
    vae_bytes_per_frame: int | None = None,
    vae_first_block_channels: int = 128,
    reserve_frac: float = 0.1,
    weight_bytes: dict[str, int] | None = None,
    fused_steps: int = 0,
) -> MemoryPlan:
    """The plan for `slots` trajectories. param_counts: {model name: parameters}; dtype: inference
    dtype of weights, activations and cache; budget_bytes: device memory to plan for (80 GB H100);
    reserve_frac of the budget is kept free (allocator fragmentation, CUDA context, workspaces);
    weight_bytes: the models' actual weight bytes (overrides param_counts x dtype bytes);
    fused_steps: Euler steps of the fused few-step path (wmpo.diffusion.fewstep), whose modulation rows
    of every step are held at once (0: the step-by-step path)."""
    for name, v in (("slots", slots), ("hidden", hidden), ("tokens_per_frame", tokens_per_frame),
                    ("chunk_len", chunk_len), ("frame_size", frame_size), ("budget_bytes", budget_bytes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    b = DTYPE_BYTES[dtype]
    D, N, c, K = hidden, tokens_per_frame, num_context, chunk_len
    weights = dict(weight_bytes) if weight_bytes is not None else {k: int(v) * b for k, v in param_counts.items()}
    kv = 2 * temporal_blocks * slots * N * (c + K) * D * b
    R = slots * K * N
    mlp = int(D * mlp_ratio)
    # residual + normalized input + qkv + attention output + projection + MLP hidden (+ its GELU)
    per_block = R * (D + D + 3 * D + D + D + 2 * mlp) * b
    modulation = slots * max(c + K, fused_steps * K) * (blocks * 6 * D + 2 * D) * b
    denoiser = per_block + modulation
    T = horizon_chunks
    slot_state = slots * T * (frame_size * frame_size * 3 + K * 7 * 8 + K * 7 * 4)  # obs u8, tokens i64, logp f32 (7 dims)
    slot_state += slots * K * 3 * frame_size * frame_size * 4  # one chunk of decoded frames (fp32)
    per_frame = vae_bytes_per_frame or vae_decode_bytes_per_frame_estimate(frame_size, vae_first_block_channels, b)
    notes = []
    if vae_bytes_per_frame is None:
        notes.append("VAE bytes/frame estimated; bench/gpu_check.sh measures it")
    usable = int(budget_bytes * (1 - reserve_frac))
    left = usable - sum(weights.values()) - slot_state
    frames = slots * K
    decode_batch = max(0, min(frames, left // per_frame)) if per_frame > 0 else frames
    if decode_batch < frames:
        notes.append(f"VAE decodes in batches of {decode_batch} frames (vae_max_batch)")
    return MemoryPlan(budget=usable, weights=weights, kv_cache=kv, denoiser_step=denoiser, slot_state=slot_state,
                      vae_bytes_per_frame=per_frame, vae_decode_batch=int(decode_batch), frames_per_chunk=frames,
                      notes=notes)


def models_param_counts(**models: Any) -> dict[str, int]:
    """{name: number of parameters} of nn.Modules (None entries skipped)."""
    out = {}
    for name, m in models.items():
        if isinstance(m, torch.nn.Module):
            out[name] = sum(p.numel() for p in m.parameters())
    return out


def plan_for_env(wm_env: Any, *, slots: int, horizon_chunks: int, extra_models: dict[str, Any] | None = None,
                 dtype: str = "bf16", budget_bytes: int | None = None,
                 vae_bytes_per_frame: int | None = None) -> MemoryPlan:
    """The plan for a WorldModelEnv (its world model and VAE) plus other models (policy, reward).
    budget_bytes None: the CUDA device's total memory, else 80 GB."""
    wm, vae = wm_env.wm, wm_env.vae
    cfg = getattr(wm, "cfg", None) or getattr(wm, "world_model").cfg
    if budget_bytes is None:
        dev = getattr(wm_env, "device", torch.device("cpu"))
        budget_bytes = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 80 * 10**9
    models = dict(world_model=getattr(wm, "world_model", wm), vae=vae, **(extra_models or {}))
    counts = models_param_counts(**models)
    wbytes = {k: sum(p.numel() * p.element_size() for p in m.parameters()) for k, m in models.items()
              if isinstance(m, torch.nn.Module)}
    vcfg = getattr(vae, "cfg", None)
    return plan_rollout_memory(
        slots=slots, hidden=cfg.hidden, temporal_blocks=cfg.temporal_blocks,
        blocks=cfg.spatial_blocks + cfg.temporal_blocks, tokens_per_frame=cfg.tokens_per_frame,
        num_context=cfg.num_context, chunk_len=cfg.chunk_len, mlp_ratio=cfg.mlp_ratio,
        frame_size=int(getattr(vcfg, "frame_size", 256)), horizon_chunks=horizon_chunks, param_counts=counts,
        dtype=dtype, budget_bytes=int(budget_bytes), vae_bytes_per_frame=vae_bytes_per_frame, weight_bytes=wbytes,
        vae_first_block_channels=int(getattr(vcfg, "block_channels", (128,))[0]),
        fused_steps=_fused_steps(wm_env),
    )


def _fused_steps(wm_env: Any) -> int:
    """The env's step count when it samples on the fused few-step path, else 0."""
    sampler = getattr(wm_env, "sampler", None)
    n = len(sampler) if sampler is not None else 0
    return n if getattr(wm_env, "fused", False) and n <= getattr(wm_env, "fused_max_steps", 0) else 0


def gb(nbytes: float) -> float:
    return round(nbytes / _GB, 3)


__all__ = ["MemoryPlan", "plan_rollout_memory", "plan_for_env", "models_param_counts",
           "vae_decode_bytes_per_frame_estimate", "DTYPE_BYTES", "gb"]
