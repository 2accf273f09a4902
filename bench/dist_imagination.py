"""Imagined trajectories per second of WMPO's group sampling at 1 and 2 ranks (torch.distributed,
gloo on CPUs: one rank per core), in one run, with the same global batch B at both sizes.

Every rank builds the preset's VAE, world model, VLA policy and reward model (random weights: the
throughput does not depend on them being trained), takes its share of the initial states and
samples B/N trajectories per iteration (wmpo.rl.dist_sampling, dynamic sampling off so B is exact),
then one data-parallel GRPO update (DDP). Timed between barriers, after one warm-up iteration.

  python bench/dist_imagination.py --preset micro --iterations 2        # seconds, a smoke run
  nice -n 10 python bench/dist_imagination.py --out bench/results/dist-2026-12-02.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _components(preset: str, num_slots: int, horizon: int):
    import numpy as np
    import torch

    from wmpo.config import get_preset
    from wmpo.models.policy import VLAPolicy
    from wmpo.models.reward import IncrementalSuccess, RewardModel
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel
    from wmpo.rollout.engine import ImaginationEngine
    from wmpo.rollout.world_model_env import WorldModelEnv

    cfg = get_preset(preset, task="square")
    torch.manual_seed(0)
    vae = FrameVAE(cfg.vae_train.vae).eval()
    wm = WorldModel(cfg.world_model).eval()
    D = cfg.world_model.action_dim
    wm.set_action_stats({"q01": -np.ones(D), "q99": np.ones(D)})
    pol = VLAPolicy(cfg.policy_train.policy).eval()
    rm = RewardModel(cfg.reward_train.reward).eval()
    env = WorldModelEnv(vae, wm, steps=cfg.sampler_steps, num_context=cfg.world_model.num_context,
                        t_context=cfg.world_model.t_context, device="cpu")
    rollout = __import__("dataclasses").replace(cfg.rollout, num_slots=num_slots, max_steps=horizon)
    tok = ActionTokenizer(-torch.ones(D), torch.ones(D))
    engine = ImaginationEngine(env, pol, IncrementalSuccess(rm, num_slots), tok, rollout)
    pool = torch.randint(0, 256, (16, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))
    return cfg, engine, pol, pool


def worker(args) -> None:
    import torch

    from wmpo.dist import init_distributed
    from wmpo.rl.dist_sampling import sample_groups_across_ranks
    from wmpo.rl.distributed import DistributedGRPOTrainer, local_grpo_config

    dist = init_distributed(backend="gloo")
    torch.set_num_threads(args.threads)
    N = dist.world_size
    cfg, engine, pol, pool = _components(args.preset, args.batch // N, args.horizon)
    grpo = __import__("dataclasses").replace(cfg.grpo, batch_size=args.batch, group_size=args.group,
                                             minibatch_size=args.batch // 2, dynamic_sampling=False)
    trainer = DistributedGRPOTrainer(pol, local_grpo_config(grpo, N), dist, "ddp")
    sample_s, update_s, frames = [], [], 0
    for it in range(args.iterations + 1):  # the first is a warm-up
        dist.barrier()
        t0 = time.perf_counter()
        batch, st = sample_groups_across_ranks(engine, pool, "insert the square nut", dist, group_size=args.group,
                                               num_trajectories=args.batch, temperature=grpo.temperature,
                                               max_steps=args.horizon, dynamic_sampling=False, seed=it)
        dist.barrier()
        t1 = time.perf_counter()
        trainer.update(batch)
        dist.barrier()
        t2 = time.perf_counter()
        if it:
            sample_s.append(t1 - t0)
            update_s.append(t2 - t1)
            frames += int(dist.all_reduce([float(batch.length.sum())])[0])
    if dist.is_main:
        ts, tu = sum(sample_s), sum(update_s)
        out = {"world_size": N, "threads_per_rank": args.threads, "iterations": args.iterations,
               "trajectories_per_iteration": args.batch, "sample_seconds": sample_s, "update_seconds": update_s,
               "imagined_trajectories_per_s": args.batch * args.iterations / ts,
               "imagined_frames_per_s": frames / ts,
               "iteration_trajectories_per_s": args.batch * args.iterations / (ts + tu)}
        Path(args.worker_out).write_text(json.dumps(out))


def main() -> int:
    from bench.world_sizes import add_world_size_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model sizes of this wmpo.config preset (micro | tiny | cpu)")
    ap.add_argument("--batch", type=int, default=16, help="B, trajectories per iteration (global, both world sizes)")
    ap.add_argument("--group", type=int, default=4, help="G")
    ap.add_argument("--horizon", type=int, default=32, help="imagined env steps per trajectory")
    add_world_size_args(ap)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    import torch

    from bench.common import result_header
    from bench.world_sizes import run_world_sizes, write_comparison

    wargs = ["--preset", args.preset, "--batch", str(args.batch), "--group", str(args.group),
             "--horizon", str(args.horizon), "--iterations", str(args.iterations)]
    runs = run_world_sizes(__file__, wargs, [int(x) for x in args.world_sizes.split(",")], args.batch, args.group,
                           lambda r: (f"{r['imagined_trajectories_per_s']:.2f} imagined trajectories/s "
                                  f"({r['imagined_frames_per_s']:.1f} frames/s), with updates {r['iteration_trajectories_per_s']:.2f}/s"))
    write_comparison({**result_header("dist_imagination", torch.device("cpu")), "preset": args.preset, "batch": args.batch,
           "group_size": args.group, "horizon": args.horizon, "cpu_count": os.cpu_count(), "note": args.note},
                     runs, "imagined_trajectories_per_s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
