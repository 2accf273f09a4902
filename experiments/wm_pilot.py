"""World-model pilot: train one architecture from scratch for a fixed wall time, then measure what WMPO
needs from it: does it predict the moving part of the scene (the arm), and does it use the actions?

    python experiments/wm_pilot.py --train RUN/data/demos.h5 RUN/data/base_rollouts.h5 \
        --heldout RUN/data/heldout.h5 --vae RUN/vae/vae.pt --patch 2 --hidden 128 --blocks 3 \
        --minutes 20 --out pilot_p2.json

Measures, on windows of the held-out episodes (fixed seed, so every pilot sees the same windows):
- wmpo.pipeline.diagnostics.action_sensitivity: the velocity error of the predicted frames on static
  and on moving latent pixels, with the real actions and with other windows' (`action_gap` =
  permuted / real on moving pixels; 1.0 = actions unused);
- open-loop PSNR (wmpo.pipeline.diagnostics.open_loop_fidelity) at frames 8 / 24 / 48 next to the
  first-frame reference.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wmpo import ops
from wmpo.data.loader import load_episodes
from wmpo.models.vae import FrameVAE
from wmpo.models.world_model import WorldModelConfig, generation_window
from wmpo.pipeline.diagnostics import MOVING, action_sensitivity, open_loop_fidelity
from wmpo.train import world_model as wm_train
from wmpo.train.world_model import WMTrainConfig, WMTrainer, build_dataset


def pilot_flow_loss(context_noise_max: float, motion_weight: float, seed: int = 0):
    """The library's flow loss with two pilot options:
    - context noise augmentation (context_noise_max > 0): each window's context frames at a flow time from
      U(0, context_noise_max), told to the model through their per-frame time, instead of the fixed
      t_context (sampling keeps t_context), so the motion cannot be extrapolated exactly from clean context;
    - motion weighting (motion_weight > 0): the squared error of the latent pixels that move
      (wmpo.pipeline.diagnostics.MOVING) weighted 1 + motion_weight, normalized to a mean weight of 1."""
    gen = torch.Generator().manual_seed(seed)

    def loss(model, x0, actions, t, noise):
        c, (B, T) = model.cfg.num_context, x0.shape[:2]
        moving = (x0[:, c:] - x0[:, c - 1:c]).float().pow(2).mean(2, keepdim=True) > MOVING
        x0 = generation_window(model.cfg, x0)
        if context_noise_max > 0:
            tc = torch.rand(B, generator=gen) * context_noise_max
            tf = torch.cat([tc[:, None].expand(B, c), t[:, None].expand(B, T - c)], 1).to(x0.dtype)
            w = tf[:, :, None, None, None]
            xt = (1 - w) * x0 + w * noise
        else:
            xt, tf = ops.noisy_context(x0, noise, t, num_context=c, t_context=model.cfg.t_context)
        err = (model(xt, tf, actions)[:, c:].float() - (noise[:, c:] - x0[:, c:]).float()).pow(2)
        wt = 1.0 + motion_weight * moving.float()
        return (err * wt).sum() / wt.expand_as(err).sum()
    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True, help="trajectory stores to train on")
    ap.add_argument("--heldout", required=True, help="trajectory store to measure on")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=6, help="spatial blocks = temporal blocks")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall time")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--context-noise-max", type=float, default=0.0,
                    help="noise augmentation: context frames at a flow time from U(0, this) in training (0: t_context)")
    ap.add_argument("--motion-weight", type=float, default=0.0,
                    help="extra loss weight of the latent pixels that move (0: the library's flow loss)")
    ap.add_argument("--delta-target", action="store_true",
                    help="WorldModelConfig.delta_target: generate differences from the last context frame")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    dev = torch.device("cpu")
    vae = FrameVAE.from_checkpoint(args.vae).to(dev).eval()
    train_eps, stats = load_episodes(args.train)
    held, _ = load_episodes(args.heldout, limit=16)
    mcfg = WorldModelConfig(latent_channels=vae.cfg.latent_channels, latent_size=vae.frame_size // vae.downsample,
                            patch=args.patch, hidden=args.hidden, spatial_blocks=args.blocks, temporal_blocks=args.blocks,
                            heads=args.heads, num_context=4, chunk_len=8, action_dim=train_eps[0].actions.shape[-1],
                            delta_target=args.delta_target)
    cfg = WMTrainConfig(model=mcfg, steps=args.max_steps, batch_size=args.batch, lr=args.lr, grad_clip=1.0, ema_decay=0.0)
    if args.context_noise_max > 0 or args.motion_weight > 0:
        wm_train.flow_loss = pilot_flow_loss(args.context_noise_max, args.motion_weight)
    data = build_dataset(vae, train_eps, stats, mcfg, dev)
    tr = WMTrainer(cfg, data, dev)
    tr.model.set_action_stats(stats)
    n_params = sum(p.numel() for p in tr.model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, {len(data)} training windows", flush=True)
    t0, losses, warm = time.time(), [], 200
    while time.time() - t0 < args.minutes * 60 and tr.step_count < args.max_steps:
        for g in tr.opt.param_groups:
            g["lr"] = args.lr * min(1.0, (tr.step_count + 1) / warm)
        losses.append(tr.step())
        if tr.step_count % 100 == 0:
            print(f"step {tr.step_count} loss {sum(losses[-100:]) / 100:.4f} ({time.time() - t0:.0f} s)", flush=True)
    train_s = time.time() - t0
    model = tr.model.eval()
    train_motion = action_sensitivity(vae, model, train_eps[:: max(1, len(train_eps) // 16)], stats, device=dev)
    res = {"config": vars(args), "params": n_params, "steps": tr.step_count, "train_s": train_s,
           "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:])), "motion": action_sensitivity(vae, model, held, stats, device=dev),
           "motion_on_training_windows": train_motion}
    fid = open_loop_fidelity(vae, model, held[:8], stats, steps=10, device=dev, max_frames=48)
    res["open_loop"] = {h: {"imagined": v["imagined_psnr"], "first_frame": v["first_frame_psnr"]} for h, v in fid["at"].items()}
    Path(args.out).write_text(json.dumps(res, indent=1))
    m = res["motion"]
    print(json.dumps({"steps": res["steps"], "loss": round(res["final_loss"], 4),
                      "moving_err_t0.7": round(m["t0.7"]["moving"], 3), "action_gap_t0.7": round(m["t0.7"]["action_gap"], 3),
                      "static_err_t0.7": round(m["t0.7"]["static"], 4),
                      "train_moving_err_t0.7": round(train_motion["t0.7"]["moving"], 3),
                      "psnr": {h: round(v["imagined"], 1) for h, v in res["open_loop"].items()},
                      "ff": {h: round(v["first_frame"], 1) for h, v in res["open_loop"].items()}}))


if __name__ == "__main__":
    main()
