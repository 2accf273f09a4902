"""Benchmark: frame-causal short-sequence attention, SDPA vs wmpo's Triton kernel.

Default shape = the paper's temporal attention: 64 trajectories x 256 tokens (N = 16384 rows of
frames) x 16 heads, T = 12 frames, hd = 72, bf16. Modes, in one run on one device:

  sdpa_eager      F.scaled_dot_product_attention with the explicit frame-causal mask (the reference)
  sdpa_causal     SDPA with is_causal=True (only when num_cached == 0)
  sdpa_compiled   torch.compile of the reference
  wmpo_op_<be>    the public op wmpo.ops.frame_causal_attention.frame_causal_attention (default dispatch and config)
  triton_dot/loop the Triton kernel, both variants, over a small sweep of block_r x num_warps (GPU)

Each mode reports the median ms, TFLOP/s (visible query-key pairs and dense T_q x T_k counts),
MFU against the dense bf16 peak, effective GB/s (q, k, v read once, o written once) and % of the
measured device-copy bandwidth, the max error against the float64 math reference on a slice, and
the speedup over sdpa_eager. JSON goes to bench/results/attention-<date>.json.

  python bench/bench_attention.py            # GPU, paper shape
  python bench/bench_attention.py --quick    # CPU smoke run (tiny shape; Triton only if TRITON_INTERPRET=1)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import bf16_peak_flops, device_name, git_sha, time_ms  # noqa: E402
from wmpo.ops.frame_causal_attention import (  # noqa: E402
    attention_flops,
    backend_for,
    frame_causal_attention,
    frame_causal_attention_ref,
    frame_causal_mask,
)

def bf16_peak(name: str) -> float | None:
    """Dense bf16 tensor-core peak in TFLOP/s (bench.common's table)."""
    peak = bf16_peak_flops(name)
    return None if peak is None else peak / 1e12


SWEEP_BLOCK_R = (1, 2, 4)  # rows per program in the GPU sweep
SWEEP_WARPS = (2, 4, 8)


def check_rows(N: int, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Sorted distinct row indices whose output is checked against float64: the first and last rows
    (where tile and mask edges are) and random rows in between (n in all, or every row if N <= n)."""
    if N <= n:
        return torch.arange(N)
    edge = n // 4
    g = torch.Generator().manual_seed(seed)
    middle = edge + torch.randperm(N - 2 * edge, generator=g)[: n - 2 * edge]
    return torch.cat([torch.arange(edge), middle, torch.arange(N - edge, N)]).sort().values


def copy_bandwidth_gbps(device: torch.device, nbytes: int, iters: int) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes / time)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(time_ms(lambda: dst.copy_(src), device, iters, 3))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traj", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256, help="spatial tokens per frame")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--frames", type=int, default=12, help="T_q: query frames")
    ap.add_argument("--num-cached", type=int, default=0, help="cached context frames (T_k = num_cached + frames)")
    ap.add_argument("--head-dim", type=int, default=72)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-compile", action="store_true", help="skip sdpa_compiled")
    ap.add_argument("--quick", action="store_true", help="tiny shape, few iterations (CPU smoke test)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.traj, args.tokens, args.heads, args.iters = 1, 8, 2, 3
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    N, H, T_q, nc, hd = args.traj * args.tokens, args.heads, args.frames, args.num_cached, args.head_dim
    T_k = nc + T_q
    torch.manual_seed(0)
    q = torch.randn(N, H, T_q, hd, device=device, dtype=dtype)
    k = torch.randn(N, H, T_k, hd, device=device, dtype=dtype)
    v = torch.randn(N, H, T_k, hd, device=device, dtype=dtype)
    scale = hd ** -0.5
    mask = frame_causal_mask(T_q, nc, device=device)

    flops_causal = attention_flops(N, H, T_q, nc, hd)
    flops_dense = attention_flops(N, H, T_q, nc, hd, causal=False)
    nbytes = (q.numel() + k.numel() + v.numel() + q.numel()) * q.element_size()
    name = device_name(device)
    peak = bf16_peak(name) if device.type == "cuda" else None
    copy_bw = copy_bandwidth_gbps(device, min(nbytes, 1 << 30), 10 if device.type == "cuda" else 2)

    # float64 math reference on the first, last and random rows, to report every mode's error
    rows = check_rows(N, 64).to(device)
    q64, k64, v64 = q[rows].double(), k[rows].double(), v[rows].double()
    s = (q64 @ k64.transpose(-1, -2)) * scale
    want = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v64

    modes: dict[str, callable] = {}
    modes["sdpa_eager"] = lambda: frame_causal_attention_ref(q, k, v, num_cached=nc, scale=scale)
    if nc == 0:
        modes["sdpa_causal"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if not args.no_compile:
        compiled = torch.compile(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask, scale=scale), dynamic=False)
        modes["sdpa_compiled"] = lambda: compiled(q, k, v)

    # the public op with its default dispatch and launch config (what the world model calls)
    modes[f"wmpo_op_{backend_for(q)}"] = lambda: frame_causal_attention(q, k, v, num_cached=nc, scale=scale)
    triton_ok = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    notes = []
    if triton_ok:
        try:
            from wmpo.kernels.temporal_attention import frame_causal_attention_triton
        except ImportError:
            from kernels.temporal_attention import frame_causal_attention_triton
        out_buf = torch.empty_like(q)
        if device.type == "cuda":
            # no 1-warp and no 8-16-row settings: they spill 3-24 KB and take from 26 s to over
            # 7 minutes in ptxas (issue 18)
            sweep = [(ud, br, nw) for ud in (True, False) for br in SWEEP_BLOCK_R for nw in SWEEP_WARPS]
        else:
            sweep = [(True, 64, 4), (False, 64, 4)]
        for ud, br, nw in sweep:
            def run(ud=ud, br=br, nw=nw):
                return frame_causal_attention_triton(q, k, v, nc, scale, out=out_buf, use_dot=ud, block_r=br, num_warps=nw,
                                                     fallback_on_error=False)

            modes[f"triton_{'dot' if ud else 'loop'}_r{br}_w{nw}"] = run
    else:
        notes.append("triton skipped: no CUDA device and TRITON_INTERPRET != 1")

    results = {}
    for mode, fn in modes.items():
        try:
            out = fn()
            err = (out[rows].double() - want).abs().max().item()
            ms = time_ms(fn, device, args.iters, 1 if args.quick else 5)
        except Exception as e:  # noqa: BLE001 - one failing config must not end the sweep
            results[mode] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"{mode:28s} FAILED: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        med = statistics.median(ms)
        r = {
            "ms_median": med,
            "ms_min": min(ms),
            "tflops_causal": flops_causal / (med * 1e-3) / 1e12,
            "tflops_dense": flops_dense / (med * 1e-3) / 1e12,
            "gbps": nbytes / (med * 1e-3) / 1e9,
            "pct_copy_bw": 100.0 * nbytes / (med * 1e-3) / 1e9 / copy_bw,
            "max_abs_err_vs_fp64": err,
        }
        if peak:
            r["mfu_dense"] = r["tflops_dense"] / peak
        results[mode] = r
        print(f"{mode:28s} {med:9.3f} ms  {r['tflops_dense']:7.2f} TFLOP/s(dense)  {r['gbps']:8.1f} GB/s  "
              f"({r['pct_copy_bw']:5.1f}% copy bw)  err {err:.2e}", flush=True)
    base = results.get("sdpa_eager", {}).get("ms_median")
    ok = {m: r for m, r in results.items() if "ms_median" in r}
    for r in ok.values():
        if base:
            r["speedup_vs_sdpa_eager"] = base / r["ms_median"]
    trit = {m: r for m, r in ok.items() if m.startswith("triton")}
    best = min(trit, key=lambda m: trit[m]["ms_median"]) if trit else None
    if best and base:
        print(f"best triton: {best}  {trit[best]['ms_median']:.3f} ms  = {base / trit[best]['ms_median']:.2f}x sdpa_eager")

    now = dt.datetime.now(dt.timezone.utc)
    result = {
        "benchmark": "frame_causal_attention",
        "device": name,
        "git_sha": git_sha(),
        "date": now.isoformat(),
        "versions": {"torch": torch.__version__, "triton": _triton_version(), "python": platform.python_version(),
                     "cuda": torch.version.cuda},
        "config": {"N": N, "traj": args.traj, "tokens": args.tokens, "heads": H, "T_q": T_q, "num_cached": nc,
                   "T_k": T_k, "head_dim": hd, "dtype": args.dtype, "iters": args.iters, "quick": args.quick},
        "flops_causal": flops_causal,
        "flops_dense": flops_dense,
        "bytes": nbytes,
        "copy_bandwidth_gbps": copy_bw,
        "bf16_peak_tflops": peak,
        "best_triton": best,
        "results": results,
        "notes": notes,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"attention-{'quick-' if args.quick else ''}{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
