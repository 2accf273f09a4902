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

  python bench/rollout_loop.py --preset micro --quick         # CPU smoke run (about a minute)
  python bench/rollout_loop.py --preset paper                 # one GPU: B 16/64/128 x steps 30/8/4

Models: the preset's own (wmpo.config, random weights). Results: bench/results/rollout_loop-<preset>-<date>.json with device, git_sha, date, config and per
mode frames_per_sec and mfu (dense bf16 peak of the GPU; null on CPU).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import peak_flops, preset_config, preset_names, result_header, write_result  # noqa: E402
from bench.common import sync as _sync  # noqa: E402

from bench.eager_rollout import rollout_eager_reference  # noqa: E402
from wmpo.rollout.engine import ImaginationEngine, RolloutConfig  # noqa: E402


# models per preset: the pipeline's own (wmpo.config); the benchmark adds only its instruction
INSTRUCTION = "stack the cubes"


def build_models(cfg: Any, device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """Real wmpo models with random weights, from the preset's RunConfig (built once per run)."""
    from wmpo.models.policy import VLAPolicy
    from wmpo.models.reward import RewardModel
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel

    vae = FrameVAE(cfg.vae_train.vae)
    wm = WorldModel(cfg.world_model)
    D = cfg.world_model.action_dim
    wm.set_action_stats({"q01": -np.ones(D), "q99": np.ones(D)})  # = the tokenizer's
    policy = VLAPolicy(cfg.policy_train.policy)
    reward = RewardModel(cfg.reward_train.reward)
    for m in (vae, wm, policy, reward):
        m.to(device).eval()
        if dtype is not None:
            m.to(dtype)
    return {"vae": vae, "world_model": wm, "policy": policy, "reward": reward, "tokenizer": ActionTokenizer(-np.ones(D), np.ones(D)),
            "config": cfg}


def engine_factory(models: dict[str, Any], steps: int, device: torch.device) -> Callable[[RolloutConfig], ImaginationEngine]:
    """-> make_engine(cfg, reference=False): a fresh world-model env and success detector (sized cfg.num_slots) around the shared models."""
    from wmpo.models.reward import IncrementalSuccess  # type: ignore
    from wmpo.rollout.world_model_env import WorldModelEnv  # type: ignore

    wm_cfg = models["config"].world_model

    def make(cfg: RolloutConfig, reference: bool = False) -> ImaginationEngine:
        # reference: no context KV cache (the context is re-denoised with the K new frames at every step)
        env = WorldModelEnv(models["vae"], models["world_model"], steps=steps, num_context=wm_cfg.num_context,
                            t_context=wm_cfg.t_context, device=device, use_cache=not reference)
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

    def timed(fn, engine: ImaginationEngine | None = None) -> tuple[float, Any]:
        fn()  # warm-up (compilation, allocator)
        if engine is not None and engine.cfg.cuda_graph:
            warm_until_captured(engine, fn)  # capture happens here, outside the timed calls
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
            wall, (b, st) = timed(lambda: eng.rollout_fixed(frames, instruction, max_steps, temperature, seed=0, early_exit=False),
                                  eng)
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
        if mode == "engine_graph":
            out["modes"][mode]["graph_captured"] = eng.graph_captured
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


def warm_until_captured(engine: ImaginationEngine, fn: Callable[[], Any], max_calls: int = 4) -> bool:
    """Call fn until the engine's chunk is captured in a CUDA graph (the capture must not land in a
    timed call), at most max_calls times. -> whether it was captured (False: capture failed, eager)."""
    for _ in range(max_calls):
        if engine.runner.graph_captured or engine.runner.graph_failed:
            break
        fn()
    return engine.runner.graph_captured


def _wm_flops(engine: ImaginationEngine, frame_u8: torch.Tensor) -> float:
    """FLOPs of one world-model step (denoising only, no decode) for one trajectory."""
    from wmpo.utils.frames import uint8_to_model

    x = uint8_to_model(frame_u8.to(engine.device))
    engine.wm_env.reset(x)
    acts = torch.zeros(1, engine.K, engine.D, device=engine.device)
    return count_flops(lambda: engine.wm_env.step(acts, decode=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=preset_names(), default="paper", help="a wmpo.config preset (its models)")
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
    preset = preset_config(args.preset)
    frame_size = preset.image_size
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    step_counts = [int(x) for x in args.steps.split(",")]
    chunks, horizon = args.chunks, args.horizon_chunks
    if args.quick:
        batch_sizes, step_counts, chunks, horizon = batch_sizes[:1] if args.preset not in ("micro", "tiny") else [4], step_counts[-1:], 1, 2
    modes = [m for m in args.modes.split(",") if m]
    if device.type != "cuda" and not args.compile_cpu:
        modes = [m for m in modes if m != "engine_compile"]
    peak = peak_flops(device)
    g = torch.Generator().manual_seed(0)
    n_init = 8
    init = torch.randint(0, 256, (n_init, frame_size, frame_size, 3), generator=g, dtype=torch.uint8)

    models = build_models(preset, device, dtype)
    points = []
    for steps in step_counts:
        make = engine_factory(models, steps, device)
        for B in batch_sizes:
            G = min(args.group_size, B)
            print(f"[rollout_loop] preset={args.preset} B={B} steps={steps} chunks={chunks}", flush=True)
            res = measure_point(make, init, INSTRUCTION, batch=B, chunks=chunks, horizon_chunks=horizon,
                                group_size=G, modes=modes, temperature=args.temperature, device=device, peak=peak)
            res["steps"] = steps
            points.append(res)
            for m, v in res["modes"].items():
                mfu = f"{v['mfu']:.1%}" if v["mfu"] is not None else "n/a"
                print(f"  {m:16s} {v['frames_per_sec']:9.2f} frames/s  mfu {mfu}", flush=True)
            print(f"  grpo             {res['grpo']['trajectories_per_hour']:9.1f} trajectories/h  "
                  f"host {res['grpo']['host_frac']:.1%}  split {res['engine_time_split_frac']}", flush=True)

    result = {
        **result_header("rollout_loop", device),
        "config": {"preset": args.preset, "vae": asdict(preset.vae_train.vae), "world_model": asdict(preset.world_model),
                   "policy": asdict(preset.policy_train.policy), "reward": asdict(preset.reward_train.reward), "frame_size": frame_size,
                   "dtype": dtype_name, "batch_sizes": batch_sizes, "steps": step_counts, "chunks": chunks,
                   "horizon_chunks": horizon, "group_size": args.group_size, "temperature": args.temperature,
                   "peak_flops": peak, "quick": args.quick},
        "modes": {f"B{p['batch']}_steps{p['steps']}/{m}": {"frames_per_sec": v["frames_per_sec"], "mfu": v["mfu"]}
                  for p in points for m, v in p["modes"].items()},
        "points": points,
    }
    write_result(args.out, f"rollout_loop-{args.preset}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
