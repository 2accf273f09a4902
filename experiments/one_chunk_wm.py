"""One chunk from real context: can the world model keep the scene for K frames when its c context frames
are real (teacher-forced), at the padded episode start and at later windows? Next to "copy the last
context frame" (the trivial prediction). Writes a JSON of per-frame PSNR and a picture (per start: the
real frames k = 0, 3, 7 of the chunk over the imagined ones, one episode).

    python experiments/one_chunk_wm.py --store RUN/data/heldout_rollouts.h5 --vae RUN/vae/vae.pt \
        --world-model RUN/wm_finetune/world_model.pt --steps 10 --out one_chunk.json --picture one_chunk.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wmpo.data.clips import episode_frames, normalize_actions
from wmpo.data.loader import load_episodes
from wmpo.models.vae import FrameVAE, psnr
from wmpo.models.world_model import WorldModel
from wmpo.rollout.world_model_env import WorldModelEnv
from wmpo.utils.frames import model_to_uint8


def one_chunk(vae, wm, episodes, stats, start: int | None, steps: int, seed: int = 0):
    """-> (imagined [B, K, 3, H, W], real [B, K, ...], last context frame [B, 3, H, W]); start None: the padded
    episode start (the first frame repeated c times, zero actions), else context frames start-c+1 .. start."""
    K, c = wm.cfg.chunk_len, wm.cfg.num_context
    env = WorldModelEnv(vae, wm, steps=steps, device="cpu", generator=torch.Generator().manual_seed(seed))
    ctx, cacts, acts, tgts = [], [], [], []
    for e in episodes:
        f = episode_frames(e, vae.frame_size)
        a = torch.as_tensor(normalize_actions(e.actions, stats)).float()
        s = 0 if start is None else start
        ctx.append(f[max(0, s - c + 1): s + 1]), cacts.append(a[max(0, s - c): s])
        acts.append(a[s: s + K]), tgts.append(f[s + 1: s + K + 1])
    last = torch.stack([x[-1] for x in ctx])
    env.reset(last)
    if start is not None:
        with torch.no_grad():
            z = vae.encode(torch.stack(ctx).flatten(0, 1)).view(env.ctx.shape)
        env.ctx.copy_(z)
        env.ctx_actions.copy_(torch.stack(cacts))
    return env.step(torch.stack(acts)).float(), torch.stack(tgts), last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="held-out trajectory store")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--starts", type=int, nargs="+", default=[8, 32, 64, 100], help="window starts besides the padded one")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", required=True, help="JSON")
    ap.add_argument("--picture", default=None, help="PNG (default: next to --out)")
    args = ap.parse_args()
    torch.manual_seed(0)
    vae = FrameVAE.from_checkpoint(args.vae).eval()
    wm = WorldModel.from_checkpoint(args.world_model).eval()
    K = wm.cfg.chunk_len
    eps, _ = load_episodes(args.store, limit=args.episodes)
    eps = [e for e in eps if len(e) > max(args.starts) + K]
    res, rows = {"world_model": args.world_model, "steps": args.steps, "episodes": len(eps), "starts": {}}, []
    for s in [None, *args.starts]:
        new, tgt, last = one_chunk(vae, wm, eps, wm.action_stats, s, args.steps)
        B = len(eps)
        p = psnr(new.flatten(0, 1), tgt.flatten(0, 1)).view(B, K).mean(0)
        q = psnr(last.unsqueeze(1).expand_as(tgt).flatten(0, 1), tgt.flatten(0, 1)).view(B, K).mean(0)
        key = "padded" if s is None else str(s)
        res["starts"][key] = {"imagined_psnr": p.tolist(), "copy_last_psnr": q.tolist()}
        print(f"start {key:>6}: imagined {np.round(p.numpy(), 1)}  copy-last {np.round(q.numpy(), 1)}", flush=True)
        b = min(1, B - 1)
        rows.append(np.concatenate([np.concatenate([model_to_uint8(tgt[b, k]).numpy(), model_to_uint8(new[b, k]).numpy()], 0)
                                    for k in (0, K // 2 - 1, K - 1)], 1))
    Path(args.out).write_text(json.dumps(res, indent=1))
    pic = np.concatenate(rows, 0)
    Image.fromarray(pic).resize((pic.shape[1] * 2, pic.shape[0] * 2), Image.NEAREST).save(
        args.picture or str(Path(args.out).with_suffix(".png")))


if __name__ == "__main__":
    main()
