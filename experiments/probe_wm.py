"""Open-loop probe of a world-model checkpoint: its EMA and its trained (raw) weights, next to the
first-frame and VAE references, on episodes it never trained on; and whether it uses its actions
(wmpo.pipeline.diagnostics.action_sensitivity: moving-pixel velocity error and action gap, 64 windows).

    python experiments/probe_wm.py --store heldout.h5 --vae RUN/vae/vae.pt \
        --world-model RUN/wm_pretrain/world_model.pt --episodes 4 --max-frames 64 --steps 10 --out probe.json

Uses wmpo.pipeline.diagnostics.open_loop_fidelity (the diagnostics stage's measure) for each weight
set; prints PSNR at the diagnostics horizons and writes every curve to --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wmpo.data.loader import load_episodes
from wmpo.models.vae import FrameVAE
from wmpo.models.world_model import WorldModel
from wmpo.pipeline.diagnostics import action_sensitivity, open_loop_fidelity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="trajectory store (HDF5) of held-out episodes")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--max-frames", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="sampler steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON file for the curves")
    args = ap.parse_args()

    dev = torch.device("cpu")
    vae = FrameVAE.from_checkpoint(args.vae).to(dev).eval()
    episodes, _ = load_episodes(args.store, limit=args.episodes)
    if not episodes:
        raise SystemExit(f"--store: no episodes in {args.store}")
    out: dict = {"store": args.store, "world_model": args.world_model, "episodes": len(episodes),
                 "steps": args.steps, "max_frames": args.max_frames}
    for label, ema in (("ema", True), ("raw", False)):
        wm = WorldModel.from_checkpoint(args.world_model, ema=ema).to(dev).eval()
        r = open_loop_fidelity(vae, wm, episodes, wm.action_stats, steps=args.steps, device=dev, seed=args.seed,
                               max_frames=args.max_frames)
        r.pop("frames")
        out[label] = r
        r["motion"] = action_sensitivity(vae, wm, episodes, wm.action_stats, device=dev)
        row = "  ".join(f"{h}: {v['imagined_psnr']:.1f}" for h, v in r["at"].items())
        m = r["motion"]["t0.7"]
        print(f"{label:>4} PSNR  {row}   moving err {m['moving']:.3f}  action gap {m['action_gap']:.3f} (t 0.7)")
    ref = out["raw"]["at"]
    print(f"{'ff':>4} PSNR  " + "  ".join(f"{h}: {v['first_frame_psnr']:.1f}" for h, v in ref.items()))
    print(f"{'vae':>4} PSNR  " + "  ".join(f"{h}: {v['vae_psnr']:.1f}" for h, v in ref.items()))
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
