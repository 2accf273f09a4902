"""Rank functions of the distributed tests (tests/test_distributed.py): spawned with gloo on CPUs,
or run under torchrun as a script (`python -m torch.distributed.run ... tests/dist_workers.py wmpo ...`)."""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wmpo.dist import DistContext  # noqa: E402
from wmpo.rl.distributed import DistributedGRPOTrainer, local_grpo_config, minibatch_shard_rows  # noqa: E402
from wmpo.rl.grpo import GRPOConfig, GRPOTrainer  # noqa: E402

# the same-batch update: B = 8 trajectories in 4 groups of 2, M = 4 (2 optimizer steps), unequal lengths
SUCCESS = [1, 0, 0, 1, 1, 0, 0, 1]
GROUP = [0, 0, 1, 1, 2, 2, 3, 3]
LENGTHS = [3, 1, 2, 3, 1, 1, 3, 2]  # chunks: the ranks' token counts differ, so the global mean matters


def update_config() -> GRPOConfig:
    return GRPOConfig(batch_size=8, group_size=2, minibatch_size=4, micro_batch_chunks=2, lr=1e-2, adam_eps=1e-3,
                      dynamic_sampling=False, temperature=1.6)


def same_batch():
    """(policy, batch) built identically in every process from fixed seeds."""
    from test_grpo import TinyPolicy, make_batch

    torch.manual_seed(0)
    pol = TinyPolicy(width=8)
    batch = make_batch(pol, SUCCESS, GROUP, lengths=LENGTHS, seed=5)
    return pol, batch


def single_process_update() -> dict[str, torch.Tensor]:
    pol, batch = same_batch()
    GRPOTrainer(pol, update_config()).update(batch)
    return {k: v.detach().clone() for k, v in pol.state_dict().items()}


class _LocalMean(DistributedGRPOTrainer):
    """A wrong trainer for the negative control: token means over the rank's own tokens only."""

    def _global_sum(self, x: float) -> float:
        return x


def update_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Each rank updates on its share of the same batch with ddp, fsdp2 and the local-mean control."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)})
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world, local_rank=rank, local_world_size=world, backend="gloo")
    cfg = update_config()
    rows = torch.from_numpy(minibatch_shard_rows(cfg.batch_size, cfg.minibatch_size, rank, world))
    runs = [("ddp", DistributedGRPOTrainer, "ddp"), ("fsdp2", DistributedGRPOTrainer, "fsdp2"), ("local_mean", _LocalMean, "ddp")]
    if importlib.util.find_spec("deepspeed") is not None:  # an optional extra
        runs.append(("deepspeed", DistributedGRPOTrainer, "deepspeed"))
    for name, cls, strategy in runs:
        pol, batch = same_batch()
        from wmpo.data.groups import group_advantages

        batch.advantage = group_advantages(batch.success, batch.group, cfg.adv_eps)  # of the whole batch's groups
        tr = cls(pol, local_grpo_config(cfg, world), ctx, strategy)
        stats = tr.update(batch.index(rows))
        if rank == 0:
            torch.save({"params": {k: v.detach().clone() for k, v in pol.state_dict().items()}, "stats": stats},
                       Path(out_dir) / f"{name}.pt")
        del tr, pol, batch
    # free the DDP/FSDP2 wrappers (FSDP2's hooks make reference cycles) while the interpreter is whole:
    # a wrapper finalised at interpreter exit can abort the rank in gloo's teardown (SIGABRT, seen in CI)
    gc.collect()
    tdist.barrier()
    tdist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# a whole WMPO run (sampling in the world model + updates) under torchrun, resumable


def toy_components(seed: int = 0):
    """wmpo's own VAE, world model env, VLA policy, tokenizer and reward detector at toy sizes."""
    from wmpo.models.policy import PolicyConfig, VLAPolicy
    from wmpo.models.reward import IncrementalSuccess, RewardConfig, RewardModel
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE, VAEConfig
    from wmpo.models.world_model import WorldModel, WorldModelConfig
    from wmpo.rollout.engine import RolloutConfig
    from wmpo.rollout.world_model_env import WorldModelEnv

    torch.manual_seed(seed)
    vae = FrameVAE(VAEConfig(frame_size=16, latent_channels=4, block_channels=(8, 16), layers_per_block=1,
                             norm_groups=4, mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_channels=4, latent_size=8, patch=2, hidden=32, spatial_blocks=1,
                                     temporal_blocks=1, heads=2, num_context=2, chunk_len=4, action_dim=3)).eval()
    wm.set_action_stats({"q01": -np.ones(3), "q99": np.ones(3)})
    pol = VLAPolicy(PolicyConfig(chunk_len=4, action_dim=3, image_size=16, patch_size=8, hidden_size=32, num_heads=2,
                                 vision_layers=1, instr_layers=1, fusion_layers=1, max_instr_len=16)).eval()
    rm = RewardModel(RewardConfig(clip_len=4, image_size=16, patch_size=8, tubelet_size=2, hidden_size=16,
                                  num_layers=1, num_heads=2)).eval()
    slots = 4
    env = WorldModelEnv(vae, wm, steps=2, num_context=2, device="cpu")
    tok = ActionTokenizer(-torch.ones(3), torch.ones(3))
    pool = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return env, pol, tok, IncrementalSuccess(rm, slots), pool, RolloutConfig(num_slots=slots, max_steps=8, group_size=2)


def wmpo_main(argv: list[str]) -> int:
    from wmpo.dist import init_distributed, shutdown_distributed
    from wmpo.rl.wmpo import wmpo_train

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds to sleep after each iteration's checkpoint")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ctx = init_distributed()
    env, pol, tok, det, pool, rcfg = toy_components()
    grpo = GRPOConfig(batch_size=8, group_size=2, minibatch_size=4, micro_batch_chunks=3, lr=1e-3, dynamic_sampling=False)
    out = Path(args.out)
    done = []

    def pause(_policy):
        done.append(1)
        if args.pause:
            time.sleep(args.pause)
        return {}

    hist = wmpo_train(env, pol, tok, det, pool, "lift", grpo=grpo, rollout=rcfg, iterations=args.iterations, horizon=8, seed=1,
                      state_path=out / "state.pt", real_eval=pause, real_eval_every=1, dist=ctx, strategy=args.strategy)
    if ctx.is_main:
        torch.save({k: v.detach().clone() for k, v in pol.state_dict().items()}, out / "params.pt")
        (out / "history.json").write_text(json.dumps({"history": hist, "ran": len(done), "world_size": ctx.world_size}))
    ctx.barrier()
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["wmpo"]:
        raise SystemExit(wmpo_main(sys.argv[2:]))
    raise SystemExit(f"usage: {sys.argv[0]} wmpo --out DIR [--iterations N] [--strategy ddp|fsdp2] [--pause S]")
