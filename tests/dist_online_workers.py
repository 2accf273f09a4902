"""Rank functions of tests/test_distributed_online.py: online GRPO (real-simulator rollouts) across gloo
ranks, spawned with torch.multiprocessing or run under torchrun as a script
(`python -m torch.distributed.run ... tests/dist_online_workers.py online --out DIR ...`)."""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wmpo.rl.online as online  # noqa: E402
from wmpo.dist import DistContext  # noqa: E402
from wmpo.models.tokenizer import ActionTokenizer  # noqa: E402
from wmpo.rl.distributed import DistributedGRPOTrainer  # noqa: E402
from wmpo.rl.grpo import GRPOConfig  # noqa: E402
from wmpo.rl.online import OnlineGRPOConfig, run_online_grpo  # noqa: E402

NUM_STATES = 8


def reach_config(budget: int = 64) -> OnlineGRPOConfig:
    """B = 8 trajectories in groups of 4 (one group per rank at 2 ranks), M = 4; dynamic sampling on;
    one group per env round, so a rank keeps sampling while its groups are all-success / all-failure."""
    return OnlineGRPOConfig(budget=budget, num_envs=4, max_chunks=3, image_size=16, seed=3, num_initial_states=NUM_STATES,
                            grpo=GRPOConfig(group_size=4, batch_size=8, minibatch_size=4, micro_batch_chunks=3, lr=1e-2,
                                            adam_eps=1e-3, dynamic_sampling=True, temperature=1.6))


def reach_states() -> np.ndarray:
    from test_online_grpo import _init_states

    return _init_states(NUM_STATES, seed=1)


def reach_policy():
    from test_grpo import TinyPolicy

    torch.manual_seed(0)
    return TinyPolicy(chunk_len=2, action_dim=3, width=8)


def params(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


class RecordingTrainer(DistributedGRPOTrainer):
    """DistributedGRPOTrainer that keeps each update's batch (as handed in) and the parameters after it."""

    updates_seen: list[dict] = []

    def update(self, batch):
        before = copy.deepcopy(batch)
        stats = super().update(batch)
        RecordingTrainer.updates_seen.append({"batch": before, "params": params(self.rollout_policy), "stats": stats})
        return stats


def _join(rank: int, world: int, init_file: str) -> DistContext:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=rank, local_world_size=world, backend="gloo")


def reach_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Online GRPO on the reach env over `world` ranks; saves each update's local batch and the parameters after
    it, the summary and the envs' reset counts (every trajectory started) to out_dir/rank{rank}.pt."""
    from test_online_grpo import ReachVecEnv

    ctx = _join(rank, world, init_file)
    online.DistributedGRPOTrainer = RecordingTrainer  # run_online_grpo builds this trainer under a process group
    ReachVecEnv.made.clear()
    pol = reach_policy()
    cfg = reach_config()
    out = run_online_grpo(pol, "reach", cfg, ActionTokenizer(-np.ones(3), np.ones(3)), "reach the green dot",
                          make_env=ReachVecEnv, initial_states=reach_states(), dist=ctx)
    torch.save({"updates": RecordingTrainer.updates_seen, "summary": out, "started": sum(e.resets * e.n for e in ReachVecEnv.made),
                "params": params(pol)}, Path(out_dir) / f"rank{rank}.pt")
    tdist.barrier()
    tdist.destroy_process_group()


def square_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """The smallest real-simulator split: square, one group of 2 per rank (VecEnv of 2 workers per rank), one chunk
    of 2 steps, one update; saves the rank's batch, its groups' initial states and the parameters after."""
    from test_grpo import tiny_vla
    from wmpo.sim.initial_states import get_initial_states

    ctx = _join(rank, world, init_file)
    online.DistributedGRPOTrainer = RecordingTrainer
    torch.manual_seed(0)
    pol = tiny_vla(action_dim=7)
    states = get_initial_states("square", "train", 2)
    cfg = OnlineGRPOConfig(budget=4, num_envs=2, max_chunks=1, image_size=32, seed=0, num_initial_states=2,
                           grpo=GRPOConfig(group_size=2, batch_size=4, minibatch_size=2, dynamic_sampling=False, lr=1e-3))
    out = run_online_grpo(pol, "square", cfg, ActionTokenizer(-0.5 * np.ones(7), 0.5 * np.ones(7)), initial_states=states, dist=ctx)
    torch.save({"updates": RecordingTrainer.updates_seen, "summary": out, "params": params(pol)}, Path(out_dir) / f"rank{rank}.pt")
    tdist.barrier()
    tdist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# a whole online GRPO run under torchrun, checkpointed by rank 0 and resumable


def online_main(argv: list[str]) -> int:
    from test_online_grpo import ReachVecEnv
    from wmpo.dist import init_distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=int, default=48)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds to sleep after each checkpoint is written")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ctx = init_distributed()
    out = Path(args.out)
    saves = []
    write = online.save_checkpoint

    def save_then_pause(path, state):
        write(path, state)
        saves.append(state["iteration"])
        if args.pause:
            time.sleep(args.pause)

    online.save_checkpoint = save_then_pause
    pol = reach_policy()
    res = run_online_grpo(pol, "reach", reach_config(args.budget), ActionTokenizer(-np.ones(3), np.ones(3)), "reach the green dot",
                          make_env=ReachVecEnv, initial_states=reach_states(), dist=ctx, state_path=out / "state.pt")
    if ctx.is_main:
        torch.save(params(pol), out / "params.pt")
        (out / "summary.json").write_text(json.dumps({**res, "saved_iterations": saves}))
    ctx.barrier()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["online"]:
        raise SystemExit(online_main(sys.argv[2:]))
    raise SystemExit(f"usage: {sys.argv[0]} online --out DIR [--budget P] [--pause S]")
