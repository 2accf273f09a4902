"""Per-frame VAE: a `diffusers.AutoencoderKL` built from a config (no downloads), wrapped as `FrameVAE`.

Paper preset: the SDXL architecture (4 latent channels, 8x downsampling, blocks 128/256/512/512).
`encode` returns scaled latents ((mean - shift) * scale, both estimated from data with
`estimate_scaling`); `decode` inverts that. Both accept any leading dims: [..., 3, H, W] <-> [..., C, h, w].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from wmpo.utils.checks import check_tensor


@dataclass
class VAEConfig:
    frame_size: int = 256
    """square frame side in pixels (frames are resized to this before encoding)"""
    latent_channels: int = 4
    """latent channels (SDXL: 4)"""
    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    """encoder/decoder block widths; downsampling = 2 ** (len - 1) (SDXL: 128/256/512/512 -> 8x)"""
    layers_per_block: int = 2
    """resnet layers per block (SDXL: 2)"""
    norm_groups: int = 32
    """GroupNorm groups (must divide every block width)"""
    mid_attention: bool = True
    """self-attention in the mid block (SDXL: yes)"""
    kl_weight: float = 1e-6
    """KL weight in the VAE loss"""

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.frame_size // self.downsample


class FrameVAE(nn.Module):
    """2D per-frame VAE. Frames float [..., 3, H, W] in [-1, 1]; latents [..., C, h, w] (scaled)."""

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        from diffusers import AutoencoderKL

        cfg = cfg or VAEConfig()
        cfg.block_channels = tuple(int(c) for c in cfg.block_channels)
        if any(c % cfg.norm_groups for c in cfg.block_channels):
            raise ValueError(f"block_channels: expected multiples of norm_groups={cfg.norm_groups}, got {cfg.block_channels}")
        self.cfg = cfg
        n = len(cfg.block_channels)
        self.ae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=cfg.block_channels, layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_groups, sample_size=cfg.frame_size,
            mid_block_add_attention=cfg.mid_attention,
        )
        self.register_buffer("scaling_factor", torch.ones(()))
        self.register_buffer("shift_factor", torch.zeros(()))

    @classmethod
    def from_autoencoder_kl(cls, ae) -> "FrameVAE":
        """Wrap an existing diffusers AutoencoderKL (e.g. a pretrained Stable Diffusion VAE, loaded by
        the caller) as the frame VAE of `WorldModelEnv`, without copying it: its scaling_factor and
        shift_factor (config) become this VAE's, so `encode` gives the scaled latents that model's
        diffusion models use. It must be made of DownEncoderBlock2D / UpDecoderBlock2D blocks."""
        conf = getattr(ae, "config", None)
        if conf is None or not hasattr(ae, "encode") or not hasattr(ae, "decode"):
            raise ValueError(f"ae: expected a diffusers AutoencoderKL, got {type(ae).__name__}")
        if any(b != "DownEncoderBlock2D" for b in conf.down_block_types) or any(b != "UpDecoderBlock2D" for b in conf.up_block_types):
            raise ValueError(f"ae: expected DownEncoderBlock2D/UpDecoderBlock2D blocks, got {conf.down_block_types}")
        size = conf.sample_size if isinstance(conf.sample_size, int) else conf.sample_size[0]
        cfg = VAEConfig(frame_size=int(size), latent_channels=int(conf.latent_channels),
                        block_channels=tuple(int(c) for c in conf.block_out_channels),
                        layers_per_block=int(conf.layers_per_block), norm_groups=int(conf.norm_num_groups),
                        mid_attention=bool(getattr(conf, "mid_block_add_attention", True)))
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.cfg, m.ae = cfg, ae
        dev = next(ae.parameters()).device
        m.register_buffer("scaling_factor", torch.tensor(float(getattr(conf, "scaling_factor", None) or 1.0), device=dev))
        m.register_buffer("shift_factor", torch.tensor(float(getattr(conf, "shift_factor", None) or 0.0), device=dev))
        return m

    # ----------------------------------------------------------------- shapes
    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    @property
    def frame_size(self) -> int:
        return self.cfg.frame_size

    @property
    def latent_size(self) -> int:
        return self.cfg.latent_size

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ----------------------------------------------------------------- raw (unscaled) ops used in training
    def posterior(self, frames: torch.Tensor):
        """frames [N, 3, H, W] -> diffusers DiagonalGaussianDistribution (unscaled)."""
        return self.ae.encode(frames).latent_dist

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(z).sample

    # ----------------------------------------------------------------- public API
    def encode(self, frames: torch.Tensor, *, sample: bool = False, max_batch: int | None = None) -> torch.Tensor:
        """frames float [..., 3, H, W] in [-1, 1] -> scaled latents [..., C, h, w] (posterior mean unless sample)."""
        check_tensor("frames", frames, floating=True)
        if frames.dim() < 4 or frames.shape[-3] != 3:
            raise ValueError(f"frames: expected shape [..., 3, H, W], got {tuple(frames.shape)}")
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).to(self._dtype())
        outs = []
        step = max_batch or x.shape[0] or 1
        for i in range(0, x.shape[0], step):
            d = self.posterior(x[i:i + step])
            z = d.sample() if sample else d.mean
            outs.append((z - self.shift_factor.to(z.dtype)) * self.scaling_factor.to(z.dtype))
        z = torch.cat(outs, 0)
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, latents: torch.Tensor, *, max_batch: int | None = None) -> torch.Tensor:
        """scaled latents [..., C, h, w] -> frames float [..., 3, H, W] (about [-1, 1], not clamped)."""
        check_tensor("latents", latents, floating=True)
        if latents.dim() < 4 or latents.shape[-3] != self.latent_channels:
            raise ValueError(f"latents: expected shape [..., {self.latent_channels}, h, w], got {tuple(latents.shape)}")
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *latents.shape[-3:]).to(self._dtype())
        z = z / self.scaling_factor.to(z.dtype) + self.shift_factor.to(z.dtype)
        step = max_batch or z.shape[0] or 1
        x = torch.cat([self.decode_raw(z[i:i + step]) for i in range(0, z.shape[0], step)], 0)
        return x.reshape(*lead, *x.shape[1:])

    @torch.no_grad()
    def estimate_scaling(self, frames: torch.Tensor, max_batch: int = 64) -> tuple[float, float]:
        """Set shift = mean and scale = 1/std of the raw posterior means over `frames`; returns (shift, scale)."""
        self.shift_factor.zero_()
        self.scaling_factor.fill_(1.0)
        z = self.encode(frames, max_batch=max_batch).float()
        shift, std = z.mean().item(), z.std().item()
        self.shift_factor.fill_(shift)
        self.scaling_factor.fill_(1.0 / max(std, 1e-6))
        return shift, 1.0 / max(std, 1e-6)

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"config": asdict(self.cfg), "state_dict": self.state_dict()}

    @classmethod
    def from_state(cls, state: dict) -> "FrameVAE":
        cfg = VAEConfig(**state["config"])
        m = cls(cfg)
        m.load_state_dict(state["state_dict"])
        return m

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "FrameVAE":
        from wmpo.utils.checkpoint import build_from_checkpoint

        return build_from_checkpoint(path, lambda st: cls.from_state(st.get("model", st)),
                                     "a VAE checkpoint (vae.pt from `wmpo train-vae`)", map_location)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of frames in [-1, 1] over the last 3 dims -> [...]."""
    mse = ((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
