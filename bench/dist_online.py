"""Real trajectories per second of online GRPO's group sampling in the real simulator at 1 and 2 ranks
(torch.distributed, gloo on CPUs: one rank per core), in one run, with the same global batch B and the
same total number of simulator workers (B / N per rank) at both sizes.

Every rank builds the preset's VLA policy (random weights: the throughput does not depend on it being
trained) and a RealGroupSampler over robosuite VecEnv workers (subprocesses), takes its share of the
training initial states and rolls out B/N trajectories per iteration (wmpo.rl.dist_sampling, dynamic
sampling off so B is exact, every trajectory runs to --steps env steps unless it succeeds), then one
data-parallel GRPO update (DDP). Timed between barriers, after one warm-up iteration (which also
starts the simulator workers). The simulator already runs in worker processes at one rank, so what
the second rank adds is a second policy / update process.

  python bench/dist_online.py --iterations 1 --steps 8                 # a smoke run
  nice -n 10 python bench/dist_online.py --out bench/results/dist-online-2026-12-07.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    import numpy as np
    import torch

    from wmpo.config import get_preset
    from wmpo.dist import derive_seed, init_distributed
    from wmpo.models.policy import VLAPolicy
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.rl.dist_sampling import sample_groups_across_ranks
    from wmpo.rl.distributed import DistributedGRPOTrainer, local_grpo_config
    from wmpo.rl.online import RealGroupSampler
    from wmpo.sim.initial_states import get_initial_states
    from wmpo.sim.tasks import get_task
    from wmpo.sim.vec_env import VecEnv

    dist = init_distributed(backend="gloo")
    torch.set_num_threads(args.threads)
    N = dist.world_size
    cfg = get_preset(args.preset, task=args.task)
    torch.manual_seed(0)
    pol = VLAPolicy(cfg.policy_train.policy).eval()
    D = cfg.policy_train.policy.action_dim
    tok = ActionTokenizer(-np.ones(D), np.ones(D))
    grpo = dataclasses.replace(cfg.online.grpo, batch_size=args.batch, group_size=args.group, minibatch_size=args.batch // 2,
                               dynamic_sampling=False)
    trainer = DistributedGRPOTrainer(pol, local_grpo_config(grpo, N), dist, "ddp")
    sampler = RealGroupSampler(pol, args.task, tok, VecEnv, num_envs=args.batch // N, image_size=cfg.image_size,
                               env_seed=derive_seed(0, dist.rank) % 2**31)
    pool = torch.as_tensor(get_initial_states(args.task, "train", max(N, args.batch // args.group)))
    instruction = get_task(args.task).instruction
    sample_s, update_s, steps = [], [], 0
    try:
        for it in range(args.iterations + 1):  # the first is a warm-up (and starts the workers)
            sampler.budget = args.batch // N
            dist.barrier()
            t0 = time.perf_counter()
            batch, st = sample_groups_across_ranks(sampler, pool, instruction, dist, group_size=args.group,
                                                   num_trajectories=args.batch, temperature=grpo.temperature, max_steps=args.steps,
                                                   dynamic_sampling=False, seed=it)
            dist.barrier()
            t1 = time.perf_counter()
            trainer.update(batch)
            dist.barrier()
            t2 = time.perf_counter()
            if it:
                sample_s.append(t1 - t0)
                update_s.append(t2 - t1)
                steps += int(dist.all_reduce([float(batch.length.sum())])[0])
    finally:
        sampler.close()
    if dist.is_main:
        ts, tu = sum(sample_s), sum(update_s)
        out = {"world_size": N, "threads_per_rank": args.threads, "envs_per_rank": args.batch // N, "iterations": args.iterations,
               "trajectories_per_iteration": args.batch, "sample_seconds": sample_s, "update_seconds": update_s,
               "real_trajectories_per_s": args.batch * args.iterations / ts, "env_steps_per_s": steps / ts,
               "iteration_trajectories_per_s": args.batch * args.iterations / (ts + tu)}
        Path(args.worker_out).write_text(json.dumps(out))


def main() -> int:
    from bench.world_sizes import add_world_size_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="policy size and frame size of this wmpo.config preset")
    ap.add_argument("--task", default="square")
    ap.add_argument("--batch", type=int, default=8, help="B, real trajectories per iteration (global, both world sizes)")
    ap.add_argument("--group", type=int, default=4, help="G")
    ap.add_argument("--steps", type=int, default=32, help="env steps per trajectory (rounded up to whole chunks)")
    add_world_size_args(ap)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    import torch

    from bench.common import result_header
    from bench.world_sizes import run_world_sizes, write_comparison

    wargs = ["--preset", args.preset, "--task", args.task, "--batch", str(args.batch), "--group", str(args.group),
             "--steps", str(args.steps), "--iterations", str(args.iterations)]
    runs = run_world_sizes(__file__, wargs, [int(x) for x in args.world_sizes.split(",")], args.batch, args.group,
                           lambda r: (f"{r['real_trajectories_per_s']:.3f} real trajectories/s ({r['env_steps_per_s']:.1f} env steps/s), "
                                  f"with updates {r['iteration_trajectories_per_s']:.3f}/s"))
    write_comparison({**result_header("dist_online", torch.device("cpu")), "preset": args.preset, "task": args.task, "batch": args.batch,
           "group_size": args.group, "steps": args.steps, "cpu_count": os.cpu_count(), "note": args.note},
                     runs, "real_trajectories_per_s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
