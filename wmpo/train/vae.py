"""`wmpo train-vae`: train the per-frame VAE on task frames (L1 + MSE reconstruction + small KL), report PSNR."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from wmpo.data.clips import FrameDataset
from wmpo.data.loader import load_episodes
from wmpo.models.vae import FrameVAE, VAEConfig, psnr
from wmpo.train.loop import TrainLoopConfig
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint, save_json
from wmpo.utils.device import autocast_dtype, default_device, seed_everything
from wmpo.utils.logging import ScalarLogger, progress


@dataclass
class VAETrainConfig(TrainLoopConfig):
    """VAE training; batch_size counts frames. Loop fields (and their defaults): TrainLoopConfig."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    """the VAE architecture"""


def train_vae(cfg: VAETrainConfig, store_paths: Sequence[str] | None, out_dir: str | Path, *, episodes=None,
              device: torch.device | str | None = None, resume: bool = True) -> dict:
    """Train (or resume) a FrameVAE; writes out_dir/vae.pt (+ config.json, tb/). Returns {"psnr", "step", "path"}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else default_device()
    seed_everything(cfg.seed)
    if episodes is None:
        episodes, _ = load_episodes(list(store_paths or []))
    data = FrameDataset(episodes, cfg.vae.frame_size)
    vae = FrameVAE(cfg.vae).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = out / "vae.pt"
    step = 0
    if resume and ckpt.is_file():
        st = load_checkpoint(ckpt)
        vae.load_state_dict(st["model"]["state_dict"])
        opt.load_state_dict(st["optim"])
        gen.set_state(st["rng"])
        step = st["step"]
    save_json(out / "config.json", asdict(cfg))
    log = ScalarLogger(out / "tb")
    amp = autocast_dtype(device)

    def save() -> None:
        save_checkpoint(ckpt, {"model": vae.state(), "optim": opt.state_dict(), "rng": gen.get_state(), "step": step})

    vae.train()
    for step in progress(range(step, cfg.steps), total=cfg.steps - step, desc="train-vae"):
        x = data.sample(cfg.batch_size, gen).to(device)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            post = vae.posterior(x)
            rec = vae.decode_raw(post.sample())
        rec = rec.float()
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + cfg.vae.kl_weight * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.scalars({"train/loss": loss.item(), "train/psnr": psnr(rec.detach(), x).mean().item()}, step)
        if step % cfg.ckpt_every == 0:
            save()
    vae.eval()
    with torch.no_grad():
        sample = data.frames[torch.randperm(len(data), generator=gen)[:256]].to(device)
        vae.estimate_scaling(sample)
        rec = vae.decode(vae.encode(sample, max_batch=64), max_batch=64)
        score = psnr(rec, sample).mean().item()
    log.scalar("eval/psnr", score, step)
    log.close()
    save()
    result = {"psnr": score, "step": step, "path": str(ckpt),
              "scaling_factor": float(vae.scaling_factor), "shift_factor": float(vae.shift_factor)}
    save_json(out / "result.json", result)
    return result
