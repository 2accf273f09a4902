"""Full-loop imagined-rollout benchmark: policy -> world model -> VAE -> reward, per chunk.

Measures, in one run on one machine, imagined frames/s of
  eager_reference  the public reference implementation's style (bench/eager_rollout.py)
  engine_eager     ImaginationEngine.rollout_fixed, eager, no host sync in the loop
  engine_compile   the same with the chunk under torch.compile            (CUDA; --compile-cpu for CPU)
  engine_graph     the same with the chunk captured in a CUDA graph       (CUDA only)
and GRPO trajectories/hour from ImaginationEngine.sample_groups (continuous batching, num_slots = B,
horizon --horizon), over batch sizes and Euler step counts, with the time split world model / VAE /
policy / reward / host from a profiled eager run. Random weights: the success rate is meaningless,
so group sampling runs without dynamic sampling (every finished group counts).

  python bench/rollout_loop.py --preset tiny --quick          # CPU smoke run (about a minute)
  python bench/rollout_loop.py --preset paper                 # one GPU: B 16/64/128 x steps 30/8/4

Results: bench/results/rollout_loop-<preset>-<date>.json with device, git_sha, date, config and per
mode frames_per_sec and mfu (dense bf16 peak of the GPU; null on CPU).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import device_name, git_sha, peak_flops  # noqa: E402
from bench.common import sync as _sync  # noqa: E402

from bench.eager_rollout import rollout_eager_reference  # noqa: E402
from wmpo.rollout.engine import ImaginationEngine, RolloutConfig  # noqa: E402


# component configs per preset (keyword arguments of each model's config dataclass)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        frame_size=32, num_context=4, chunk_len=8, action_dim=7, t_context=50, instruction="stack the cubes",
        vae=dict(frame_size=32, latent_channels=4, block_channels=(16, 32, 32), layers_per_block=1, norm_groups=8,
                 mid_attention=False),
        world_model=dict(hidden=64, spatial_blocks=2, temporal_blocks=2, heads=4, patch=2),
        policy=dict(image_size=32, patch_size=8, hidden_size=64, num_heads=4, vision_layers=2, instr_layers=1,
                    fusion_layers=2),
        reward=dict(clip_len=8, image_size=32, patch_size=8, tubelet_size=2, hidden_size=32, num_layers=1, num_heads=2),
    ),
    "paper": dict(
        frame_size=256, num_context=4, chunk_len=8, action_dim=7, t_context=50, instruction="stack the cubes",
        # SDXL-VAE architecture: 256x256 -> 4x32x32 latents
        vae=dict(frame_size=256, latent_channels=4, block_channels=(128, 256, 512, 512)),
        # DiT: hidden 1152, 28 spatial + 28 temporal blocks, 16 heads, patch 2
        world_model=dict(hidden=1152, spatial_blocks=28, temporal_blocks=28, heads=16, patch=2),
        # ViT-B/16-sized vision tower + instruction encoder + fusion (about 110M parameters)
        policy=dict(image_size=224, patch_size=16, hidden_size=768, num_heads=12, vision_layers=12, instr_layers=2,
                    fusion_layers=4),
        # VideoMAE-S-sized reward model on 8-frame clips at 224
        reward=dict(clip_len=8, image_size=224, patch_size=16, tubelet_size=2, hidden_size=384, num_layers=12, num_heads=6),
    ),
}


def build_models(preset: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """Real wmpo models with random weights (built once per run)."""
    try:
        from wmpo.models.policy import VLAPolicy, PolicyConfig  # type: ignore
        from wmpo.models.reward import RewardModel, RewardConfig  # type: ignore
        from wmpo.models.tokenizer import ActionTokenizer  # type: ignore
        from wmpo.models.vae import FrameVAE, VAEConfig  # type: ignore
        from wmpo.models.world_model import WorldModel, WorldModelConfig  # type: ignore
    except ImportError as e:
        raise SystemExit(f"bench/rollout_loop.py: a wmpo component is missing ({e}); it needs vae, world_model, "
                         "policy, reward and tokenizer")
    p = preset
    vae = FrameVAE(VAEConfig(**p["vae"]))
    wm = WorldModel(_wm_config(WorldModelConfig, p))
    policy = VLAPolicy(PolicyConfig(chunk_len=p["chunk_len"], action_dim=p["action_dim"], **p["policy"]))
    reward = RewardModel(RewardConfig(**p["reward"]))
    for m in (vae, wm, policy, reward):
        m.to(device).eval()
        if dtype is not None:
            m.to(dtype)
    return {"vae": vae, "world_model": wm, "policy": policy, "reward": reward, "tokenizer": ActionTokenizer(-np.ones(p["action_dim"]), np.ones(p["action_dim"])), "preset": p}


def _wm_config(cls: Any, p: dict[str, Any]) -> Any:
    """WorldModelConfig from the preset (latent geometry from the VAE config; unknown names rejected loudly)."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    vae = p["vae"]
    kw = dict(p["world_model"])
    derived = dict(latent_channels=vae["latent_channels"], latent_size=vae["frame_size"] // 2 ** (len(vae["block_channels"]) - 1),
                   num_context=p["num_context"], chunk_len=p["chunk_len"], action_dim=p["action_dim"])
    kw.update({k: v for k, v in derived.items() if k in names})
    unknown = sorted(set(kw) - names)
    if unknown:
        raise SystemExit(f"bench/rollout_loop.py: WorldModelConfig has no field(s) {unknown}; fields: {sorted(names)}")
    return cls(**kw)


def engine_factory(models: dict[str, Any], steps: int, device: torch.device) -> Callable[[RolloutConfig], ImaginationEngine]:
    """-> make_engine(cfg, reference=False): a fresh world-model env and success detector (sized cfg.num_slots) around the shared models."""
    from wmpo.models.reward import IncrementalSuccess  # type: ignore
    from wmpo.rollout.world_model_env import WorldModelEnv  # type: ignore

    p = models["preset"]

    def make(cfg: RolloutConfig, reference: bool = False) -> ImaginationEngine:
        # reference: no context KV cache (the context is re-denoised with the K new frames at every step)
        env = WorldModelEnv(models["vae"], models["world_model"], steps=steps, num_context=p["num_context"],
                            t_context=p["t_context"], device=device, use_cache=not reference)
        det = IncrementalSuccess(models["reward"], batch_size=cfg.num_slots, device=device)
        return ImaginationEngine(env, models["policy"], det, models["tokenizer"], cfg)

    return make


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of fn (torch.utils.flop_counter: matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())










def measure_point(
    make_engine: Callable[..., ImaginationEngine],
    init_frames: torch.Tensor,
    instruction: str,
    *,
    batch: int,
    chunks: int,
    horizon_chunks: int,
    group_size: int,
    modes: list[str],
    temperature: float,
    device: torch.device,
    peak: float | None,
    repeats: int = 1,
) -> dict[str, Any]:
    """All modes at one (batch size, step count). make_engine(cfg, reference=False) builds an engine on
    fresh-state components (reference=True: the reference implementation's world-model settings)."""
    frames = init_frames[torch.arange(batch) % init_frames.shape[0]]
    # FLOPs of one chunk at batch 1, scaled (every component is linear in the batch)
    one = make_engine(RolloutConfig(num_slots=1))
    K = one.K
    max_steps = chunks * K
    chunk_flops = count_flops(lambda: one.rollout_fixed(frames[:1], instruction, K, temperature, seed=0, early_exit=False)) * batch
    wm_flops = _wm_flops(one, frames[:1]) * batch
    out: dict[str, Any] = {"batch": batch, "chunks": chunks, "frames_per_call": batch * chunks * K,
                           "flops_per_chunk": chunk_flops, "world_model_flops_per_chunk": wm_flops, "modes": {}}

    def timed(fn) -> tuple[float, Any]:
        fn()  # warm-up (compilation, graph capture, allocator)
        best, res = float("inf"), None
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            res = fn()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        return best, res

    for mode in modes:
        cfg = RolloutConfig(num_slots=batch)
        if mode == "engine_compile":
            cfg.compile_chunk, cfg.compile_on_cpu = True, True
        elif mode == "engine_graph":
            if device.type != "cuda":
                continue
            cfg.cuda_graph = True
        eng = make_engine(cfg, reference=(mode == "eager_reference"))
        if mode == "eager_reference":
            wall, (b, st) = timed(lambda: rollout_eager_reference(eng, frames, instruction, max_steps, temperature, seed=0))
            split = st["time"]
        elif mode.startswith("engine_"):
            wall, (b, st) = timed(lambda: eng.rollout_fixed(frames, instruction, max_steps, temperature, seed=0, early_exit=False))
            split = None
        else:
            raise ValueError(f"mode: unknown {mode!r}")
        n_frames = batch * chunks * K
        fps = n_frames / wall
        out["modes"][mode] = {
            "wall_s": wall,
            "frames_per_sec": fps,
            "mfu": (chunk_flops * chunks / wall / peak) if peak else None,
            "world_model_mfu": (wm_flops * chunks / wall / peak) if peak else None,
            "tflops_per_sec": chunk_flops * chunks / wall / 1e12,
            "time_split_s": split,
        }
    # time split of the engine loop (profiled: synchronizes around each phase)
    prof = make_engine(RolloutConfig(num_slots=batch, profile=True))
    prof.rollout_fixed(frames, instruction, K, temperature, seed=0, early_exit=False)
    _, st = prof.rollout_fixed(frames, instruction, max_steps, temperature, seed=0, early_exit=False)
    tot = sum(st["time"].values())
    out["engine_time_split_s"] = st["time"]
    out["engine_time_split_frac"] = {k: v / tot for k, v in st["time"].items()} if tot > 0 else {}
    # GRPO group sampling, continuous batching, to the horizon or success
    g = make_engine(RolloutConfig(num_slots=batch, group_size=group_size))
    t0 = time.perf_counter()
    _sync(device)
    gb, gs = g.sample_groups(init_frames, instruction, group_size=group_size, num_trajectories=batch,
                             temperature=temperature, max_steps=horizon_chunks * K, dynamic_sampling=False, seed=0)
    _sync(device)
    wall = time.perf_counter() - t0
    out["grpo"] = {
        "trajectories": len(gb), "wall_s": wall, "trajectories_per_hour": len(gb) / wall * 3600,
        "horizon_steps": horizon_chunks * K, "chunks": gs["chunks"], "success_rate": float(gb.success.float().mean()) if len(gb) else None,
        "frames_per_sec_active": gs["frames_active"] / wall, "frames_kept": gs["frames_kept"], "slot_utilization": gs["slot_utilization"],
        "host_s": gs["host_s"], "host_frac": gs["host_s"] / wall,
    }
    ref = out["modes"].get("eager_reference", {}).get("frames_per_sec")
    if ref:
        out["speedup_vs_reference"] = {m: v["frames_per_sec"] / ref for m, v in out["modes"].items()}
        # the reference runs every trajectory to the horizon: its trajectories/hour follow from its frames/s
        out["grpo"]["reference_trajectories_per_hour_est"] = ref * 3600 / (horizon_chunks * K)
        out["grpo"]["speedup_vs_reference_est"] = out["grpo"]["trajectories_per_hour"] / out["grpo"]["reference_trajectories_per_hour_est"]
    return out


def _wm_flops(engine: ImaginationEngine, frame_u8: torch.Tensor) -> float:
    """FLOPs of one world-model step (denoising only, no decode) for one trajectory."""
    from wmpo.utils.frames import uint8_to_model

    x = uint8_to_model(frame_u8.to(engine.device))
    engine.wm_env.reset(x)
    acts = torch.zeros(1, engine.K, engine.D, device=engine.device)
    return count_flops(lambda: engine.wm_env.step(acts, decode=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    ap.add_argument("--quick", action="store_true", help="one batch size, one step count, one chunk")
    ap.add_argument("--batch-sizes", default="16,64,128")
    ap.add_argument("--steps", default="30,8,4", help="Euler step counts")
    ap.add_argument("--chunks", type=int, default=2, help="chunks per timed call")
    ap.add_argument("--horizon-chunks", type=int, default=4, help="GRPO sampling horizon in chunks")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.6)
    ap.add_argument("--modes", default="eager_reference,engine_eager,engine_compile,engine_graph")
    ap.add_argument("--compile-cpu", action="store_true", help="also run engine_compile on the CPU")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else None
    preset = PRESETS[args.preset]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    step_counts = [int(x) for x in args.steps.split(",")]
    chunks, horizon = args.chunks, args.horizon_chunks
    if args.quick:
        batch_sizes, step_counts, chunks, horizon = batch_sizes[:1] if args.preset != "tiny" else [4], step_counts[-1:], 1, 2
    modes = [m for m in args.modes.split(",") if m]
    if device.type != "cuda" and not args.compile_cpu:
        modes = [m for m in modes if m != "engine_compile"]
    peak = peak_flops(device)
    g = torch.Generator().manual_seed(0)
    n_init = 8
    init = torch.randint(0, 256, (n_init, preset["frame_size"], preset["frame_size"], 3), generator=g, dtype=torch.uint8)

    models = build_models(preset, device, dtype)
    points = []
    for steps in step_counts:
        make = engine_factory(models, steps, device)
        for B in batch_sizes:
            G = min(args.group_size, B)
            print(f"[rollout_loop] preset={args.preset} B={B} steps={steps} chunks={chunks}", flush=True)
            res = measure_point(make, init, preset["instruction"], batch=B, chunks=chunks, horizon_chunks=horizon,
                                group_size=G, modes=modes, temperature=args.temperature, device=device, peak=peak)
            res["steps"] = steps
            points.append(res)
            for m, v in res["modes"].items():
                mfu = f"{v['mfu']:.1%}" if v["mfu"] is not None else "n/a"
                print(f"  {m:16s} {v['frames_per_sec']:9.2f} frames/s  mfu {mfu}", flush=True)
            print(f"  grpo             {res['grpo']['trajectories_per_hour']:9.1f} trajectories/h  "
                  f"host {res['grpo']['host_frac']:.1%}  split {res['engine_time_split_frac']}", flush=True)

    now = _dt.datetime.now(_dt.timezone.utc)
    result = {
        "bench": "rollout_loop",
        "device": device_name(device),
        "git_sha": git_sha(),
        "date": now.isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda},
        "config": {"preset": args.preset, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in preset.items()},
                   "dtype": dtype_name, "batch_sizes": batch_sizes, "steps": step_counts, "chunks": chunks,
                   "horizon_chunks": horizon, "group_size": args.group_size, "temperature": args.temperature,
                   "peak_flops": peak, "quick": args.quick},
        "modes": {f"B{p['batch']}_steps{p['steps']}/{m}": {"frames_per_sec": v["frames_per_sec"], "mfu": v["mfu"]}
                  for p in points for m, v in p["modes"].items()},
        "points": points,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"rollout_loop-{args.preset}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"[rollout_loop] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
