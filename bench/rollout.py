"""World-model imagined-rollout benchmark: imagined frames/sec of WorldModelEnv (world model + VAE decode).

Modes (MODES table; add a row to extend):
  eager_ref_fp32   no context cache, reference AdaLN ops, fp32, eager     (the reference path)
  eager_ref_bf16   the same in bf16                                       (CUDA)
  cache_bf16       context KV cache, public (fused) ops, bf16, eager      (CUDA)
  ours             context KV cache, fused ops, bf16, torch.compile       (CUDA; --compile-cpu on CPU, fp32)
  cache_fp32       context KV cache, fused ops, fp32, eager               (CPU default)
Actions are random in [-1, 1] (the policy is not part of this benchmark; bench/rollout_loop.py has the
full loop). Each chunk decodes all K frames (the reward model needs them).

FLOPs are counted analytically (wmpo.models.world_model.world_model_flops; VAE decode with
torch.utils.flop_counter on one latent). `mfu` uses the model FLOPs of the cached algorithm (context once
per chunk + K frames per step), the same for every mode, so MFU ratios equal throughput ratios;
`denoiser_mfu` is the world-model part alone over its measured time. Peak = dense bf16 of the GPU.

  python bench/rollout.py --preset micro --device cpu         # smoke run, seconds (models: wmpo.config presets)
  python bench/rollout.py --preset paper                      # one GPU: 16 and 64 trajectories, 30 steps
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import peak_flops, preset_config, preset_names, result_header, write_result  # noqa: E402
from bench.common import sync as _sync  # noqa: E402

from wmpo import ops  # noqa: E402
from wmpo.models.vae import FrameVAE  # noqa: E402
from wmpo.models.world_model import WorldModel, world_model_flops  # noqa: E402
from wmpo.rollout.world_model_env import WorldModelEnv  # noqa: E402


# models: the pipeline preset's own VAE and world model (wmpo.config); per preset only the
# measurement sizes (Euler steps default to the preset's sampler_steps)
RUN_SIZES: dict[str, dict[str, Any]] = {
    "micro": dict(batch_sizes=(2, 4), warmup=1, chunks=2),
    "tiny": dict(batch_sizes=(2, 4), warmup=1, chunks=2),
}
DEFAULT_SIZES = dict(batch_sizes=(16, 64), warmup=2, chunks=4)


@dataclass
class Mode:
    name: str
    use_cache: bool
    reference_ops: bool
    dtype: str  # "fp32" | "bf16"
    compile: bool
    cuda_only: bool = False


MODES: list[Mode] = [
    Mode("eager_ref_fp32", use_cache=False, reference_ops=True, dtype="fp32", compile=False),
    Mode("eager_ref_bf16", use_cache=False, reference_ops=True, dtype="bf16", compile=False, cuda_only=True),
    Mode("cache_bf16", use_cache=True, reference_ops=False, dtype="bf16", compile=False, cuda_only=True),
    Mode("ours", use_cache=True, reference_ops=False, dtype="bf16", compile=True, cuda_only=True),
    Mode("cache_fp32", use_cache=True, reference_ops=False, dtype="fp32", compile=False),
]










def vae_decode_flops(vae: FrameVAE) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.zeros(1, vae.latent_channels, vae.latent_size, vae.latent_size, device=next(vae.parameters()).device,
                    dtype=next(vae.parameters()).dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        vae.decode(z)
    return float(fc.get_total_flops())


class ModelCache:
    """fp32 master models + lazily made copies per dtype (shared by the modes)."""

    def __init__(self, vae: FrameVAE, wm: WorldModel):
        self.models = {"fp32": (vae, wm)}

    def get(self, dtype: str):
        if dtype not in self.models:
            vae, wm = self.models["fp32"]
            td = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
            self.models[dtype] = (copy.deepcopy(vae).to(td), copy.deepcopy(wm).to(td))
        return self.models[dtype]


def run_mode(mode: Mode, models: ModelCache, device: torch.device, B: int, steps: int, warmup: int, chunks: int,
             compile_mode: str | None) -> dict[str, Any]:
    """One mode; reference modes run every wmpo op as its plain-PyTorch reference (wmpo.ops.reference_ops)."""
    with ops.reference_ops() if mode.reference_ops else contextlib.nullcontext():
        return _run_mode(mode, models, device, B, steps, warmup, chunks, compile_mode)


def _run_mode(mode: Mode, models: ModelCache, device: torch.device, B: int, steps: int, warmup: int, chunks: int,
              compile_mode: str | None) -> dict[str, Any]:
    vae, wm = models.get(mode.dtype)
    saved = {}
    if mode.compile:
        for obj, name in ((wm, "forward_cached"), (wm, "build_context_cache"), (wm, "forward"), (vae, "decode_raw")):
            saved[(id(obj), name)] = (obj, name)
            setattr(obj, name, torch.compile(getattr(obj, name), mode=compile_mode, dynamic=False))
    try:
        env = WorldModelEnv(vae, wm, steps=steps, device=device, use_cache=mode.use_cache,
                            generator=torch.Generator(device=device).manual_seed(0))
        H = vae.frame_size
        first = torch.rand(B, 3, H, H, device=device) * 2 - 1
        K, A = wm.cfg.chunk_len, wm.cfg.action_dim
        acts = [torch.rand(B, K, A, device=device) * 2 - 1 for _ in range(max(warmup, chunks))]
        warm_s = _timed_chunks(env, first, acts[:warmup], device)
        wall = _timed_chunks(env, first, acts[:chunks], device)  # throughput: no sync inside the loop
        # split: sync around each phase
        env.reset(first)
        _sync(device)
        t_wm = t_vae = 0.0
        t0 = time.perf_counter()
        for i in range(chunks):
            a = time.perf_counter()
            lat = env.step(acts[i], decode=False)
            _sync(device)
            b = time.perf_counter()
            env.decode(lat)
            _sync(device)
            t_wm += b - a
            t_vae += time.perf_counter() - b
        wall_split = time.perf_counter() - t0
    finally:
        for obj, name in saved.values():
            delattr(obj, name)  # back to the class method
    return {"frames_per_sec": B * K * chunks / wall, "seconds_per_chunk": wall / chunks, "warmup_s": warm_s,
            "time_split": {"world_model": t_wm / wall_split, "vae_decode": t_vae / wall_split,
                           "host": max(0.0, 1 - (t_wm + t_vae) / wall_split)},
            "world_model_s_per_chunk": t_wm / chunks, "vae_s_per_chunk": t_vae / chunks}


def _timed_chunks(env: WorldModelEnv, first: torch.Tensor, acts: list[torch.Tensor], device: torch.device) -> float:
    """Seconds for reset(first) then one step per action chunk, synchronized only at the ends."""
    env.reset(first)
    _sync(device)
    t0 = time.perf_counter()
    for a in acts:
        env.step(a)
    _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=preset_names(), default="paper", help="a wmpo.config preset (its VAE and world model)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-sizes", type=int, nargs="+")
    ap.add_argument("--steps", type=int, help="Euler steps per chunk")
    ap.add_argument("--chunks", type=int, help="timed chunks per measurement")
    ap.add_argument("--warmup", type=int, help="warm-up chunks (compilation happens here)")
    ap.add_argument("--modes", nargs="+", help=f"subset of {[m.name for m in MODES]}")
    ap.add_argument("--compile-cpu", action="store_true", help="also run 'ours' (torch.compile, fp32) on CPU")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = preset_config(a.preset)
    p = RUN_SIZES.get(a.preset, DEFAULT_SIZES)
    steps = a.steps or cfg.sampler_steps
    chunks, warmup = a.chunks or p["chunks"], a.warmup if a.warmup is not None else p["warmup"]
    batch_sizes = a.batch_sizes or list(p["batch_sizes"])
    modes = [m for m in MODES if (device.type == "cuda" or not m.cuda_only)]
    if device.type != "cuda" and a.compile_cpu:
        modes.append(Mode("ours_cpu_fp32", use_cache=True, reference_ops=False, dtype="fp32", compile=True))
    if a.modes:
        modes = [m for m in MODES + modes if m.name in a.modes]
        modes = list({m.name: m for m in modes}.values())
    torch.manual_seed(0)
    vcfg, wcfg = cfg.vae_train.vae, cfg.world_model
    vae = FrameVAE(vcfg).to(device).eval()
    wm = WorldModel(wcfg).to(device).eval()
    with torch.no_grad():  # random weights, but not the zero-init (which would skip nothing, but looks degenerate)
        wm.final.weight.normal_(0, 0.02)
        wm.modulation.weight.normal_(0, 0.02)
    models = ModelCache(vae, wm)
    peak = peak_flops(device)
    c, K = wcfg.num_context, wcfg.chunk_len
    vflops = vae_decode_flops(vae)
    result: dict[str, Any] = {
        **result_header("rollout", device), "preset": a.preset,
        "config": {"vae": asdict(vcfg), "world_model": asdict(wcfg), "euler_steps": steps, "chunks": chunks,
                   "warmup": warmup, "peak_flops": peak},
        "runs": [],
    }
    for B in batch_sizes:
        wm_model = world_model_flops(wcfg, B, c, c) + steps * world_model_flops(wcfg, B, K, c + K)
        wm_nocache = steps * world_model_flops(wcfg, B, c + K, c + K)
        chunk_flops = wm_model + B * K * vflops
        run = {"batch": B, "model_flops_per_chunk": chunk_flops, "world_model_flops_per_chunk": wm_model,
               "uncached_world_model_flops_per_chunk": wm_nocache, "vae_flops_per_chunk": B * K * vflops, "modes": {}}
        for m in modes:
            try:
                r = run_mode(m, models, device, B, steps, warmup, chunks, a.compile_mode)
            except Exception as e:  # keep the other modes' numbers
                r = {"error": f"{type(e).__name__}: {e}"}
                print(f"[{m.name} B={B}] failed: {r['error']}", file=sys.stderr)
            else:
                spc = r["seconds_per_chunk"]
                r["mfu"] = chunk_flops / spc / peak if peak else None
                r["denoiser_mfu"] = wm_model / r["world_model_s_per_chunk"] / peak if peak else None
                r["tflops_per_sec"] = chunk_flops / spc / 1e12
                r["mode"] = asdict(m)
            run["modes"][m.name] = r
            if "error" not in r:
                print(f"B={B:<4} {m.name:<16} {r['frames_per_sec']:10.1f} frames/s  mfu={r['mfu']}  split="
                      + ", ".join(f"{k} {v:.0%}" for k, v in r["time_split"].items()))
        ref = run["modes"].get("eager_ref_fp32", {}).get("frames_per_sec")
        if ref:
            run["speedup_vs_eager_ref_fp32"] = {k: v["frames_per_sec"] / ref for k, v in run["modes"].items() if "frames_per_sec" in v}
        result["runs"].append(run)
    write_result(a.out, f"rollout-{a.preset}-{device.type}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
