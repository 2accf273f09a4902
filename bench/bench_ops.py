"""Benchmark of wmpo's fused ops: eager reference vs torch.compile(reference) vs ours.

    python bench/bench_ops.py                      # GPU: paper shapes, triton and cuda backends
    python bench/bench_ops.py --device cpu --quick # CPU smoke run: small shapes, cpp backend

For every op and shape: median ms, effective GB/s (bytes that must move / time) and % of the
measured copy bandwidth, plus the speed-up against torch.compile of the reference. Results are
printed and written as JSON to bench/results/ with the device, versions, git SHA and date.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import wmpo.ops as ops  # noqa: E402


def timer(device: str):
    """median-ms timer: triton.testing.do_bench on GPU, a wall-clock loop on CPU."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    def cpu_time(fn, min_time=0.2, max_reps=50):
        fn()
        times = []
        t_end = time.perf_counter() + min_time
        while len(times) < 3 or (time.perf_counter() < t_end and len(times) < max_reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return cpu_time


def copy_bandwidth(device: str, dtype: torch.dtype, bench) -> float:
    """GB/s of a plain device copy (read + write), the roofline for these memory-bound ops."""
    n = (256 << 20) // 2 if device == "cuda" else (32 << 20) // 2
    src = torch.randn(n, device=device).to(dtype)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def cases(device: str, quick: bool, dtype: torch.dtype, trajectories: list[int]):
    """(op name, shape label, bytes moved, {impl name: callable}) for every op and shape.

    In-place ops (flow_step) also give "reset": restores their input, so that the reference and the
    fused result are computed from the same input into separate tensors (see op_errors)."""
    dev = torch.device(device)
    D = 1152
    frames, tpf = (4, 16) if quick else (12, 256)
    out = []
    for B in ([1] if quick else trajectories):
        F_ = B * frames
        R = F_ * tpf
        es = torch.tensor([], dtype=dtype).element_size()
        x = torch.randn(R, D, device=dev, dtype=dtype)
        y = torch.randn(R, D, device=dev, dtype=dtype)
        sh, sc, gt = (0.1 * torch.randn(F_, D, device=dev, dtype=dtype) for _ in range(3))
        label = f"B={B} F={frames} tpf={tpf} D={D}"
        out.append(("adaln_modulate", label, (2 * R * D + 2 * F_ * D) * es, {
            "ref": lambda x=x, sh=sh, sc=sc: ops.adaln_modulate_ref(x, sh, sc, tokens_per_frame=tpf),
            "fused": lambda x=x, sh=sh, sc=sc, be=None: ops.adaln_modulate(x, sh, sc, tokens_per_frame=tpf, backend=be)}))
        out.append(("gated_residual_adaln", label, (4 * R * D + 3 * F_ * D) * es, {
            "ref": lambda x=x, y=y, g=gt, sh=sh, sc=sc: ops.gated_residual_adaln_ref(x, y, g, sh, sc, tokens_per_frame=tpf),
            "fused": lambda x=x, y=y, g=gt, sh=sh, sc=sc, be=None: ops.gated_residual_adaln(x, y, g, sh, sc, tokens_per_frame=tpf, backend=be)}))
        lat_shape = (B, frames, 4, 32, 32) if not quick else (B, frames, 4, 16, 16)
        x0 = torch.randn(lat_shape, device=dev, dtype=dtype)
        nz = torch.randn_like(x0)
        t = torch.rand(B, device=dev)
        n = x0.numel()
        c = min(4, frames - 1)
        lab2 = f"latents {list(lat_shape)} c={c}"
        out.append(("noisy_context", lab2, 3 * n * es + 4 * B * frames, {
            "ref": lambda: ops.noisy_context_ref(x0, nz, t, num_context=c, t_context=0.05),
            "fused": lambda be=None: ops.noisy_context(x0, nz, t, num_context=c, t_context=0.05, backend=be)}))
        xs = x0.clone()
        n_pred = n // frames * (frames - c)
        t2 = t * 0.999
        out.append(("flow_step", lab2, 3 * n_pred * es, {
            "ref": lambda xs=xs, nz=nz, t=t, t2=t2, c=c: ops.flow_step_ref(xs, nz, t, t2, num_context=c),
            "fused": lambda be=None, xs=xs, nz=nz, t=t, t2=t2, c=c: ops.flow_step(xs, nz, t, t2, num_context=c, backend=be),
            "reset": lambda xs=xs, x0=x0: xs.copy_(x0)}))
    N = 512 if quick else 64 * 8 * 56
    logits = torch.randn(N, 256, device=dev, dtype=dtype)
    tokens = torch.randint(0, 256, (N,), device=dev)
    out.append(("action_logprob", f"{N} tokens x 256", N * 256 * logits.element_size() + N * 8 + 2 * N * 4, {
        "ref": lambda: ops.action_logprob_ref(logits, tokens, temperature=1.6),
        "fused": lambda be=None: ops.action_logprob(logits, tokens, temperature=1.6, backend=be)}))
    return out


def _snapshot(out):
    """The outputs as fresh tensors (an in-place op returns its input, which the next call changes)."""
    return tuple(o.detach().clone() for o in _tup(out))


def op_errors(impls: dict, runs: dict) -> dict:
    """Max abs error of every run against the eager reference, each computed from the same inputs:
    in-place ops are reset before each call and their outputs copied, so the two sides never alias."""
    reset = impls.get("reset", lambda: None)
    reset()
    want = _snapshot(impls["ref"]())
    errs = {}
    for name, fn in runs.items():
        reset()
        got = _snapshot(fn())
        errs[name] = max((g.float() - w.float()).abs().max().item() for g, w in zip(got, want))
    reset()
    return errs


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--trajectories", type=int, nargs="+", default=[16, 64])
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    bench = timer(a.device)
    backends = ["triton"] + (["cuda"] if ops.extension_has_cuda() else []) if a.device == "cuda" else (
        ["cpp"] if ops.HAS_EXTENSION else [])
    bw = copy_bandwidth(a.device, dtype, bench)
    print(f"device={a.device} dtype={a.dtype} copy bandwidth {bw:.1f} GB/s; backends {backends}")
    rows = []
    for op, label, nbytes, impls in cases(a.device, a.quick, dtype, a.trajectories):
        runs = {"eager_ref": impls["ref"]}
        if not a.no_compile:
            runs["compiled_ref"] = torch.compile(impls["ref"], fullgraph=True, dynamic=False)
        for be in backends:
            runs[be] = (lambda f=impls["fused"], be=be: f(be=be))
        res = {}
        for name, fn in runs.items():
            try:
                err = op_errors(impls, {name: fn})[name]
                ms = bench(fn)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"  {op} {name}: FAILED {type(e).__name__}: {e}")
                continue
            gbs = nbytes / ms / 1e6
            res[name] = ms
            rows.append({"op": op, "shape": label, "impl": name, "ms": ms, "GBps": gbs, "pct_copy_bw": 100 * gbs / bw,
                         "bytes": nbytes, "max_abs_err_vs_eager_ref": err})
        base = res.get("compiled_ref", res.get("eager_ref"))
        for r in rows:
            if r["op"] == op and r["shape"] == label and base:
                r["speedup_vs_compiled_ref" if "compiled_ref" in res else "speedup_vs_eager_ref"] = base / r["ms"]
        print(f"{op:22s} {label}")
        for r in rows:
            if r["op"] == op and r["shape"] == label:
                sp = r.get("speedup_vs_compiled_ref", r.get("speedup_vs_eager_ref", float('nan')))
                print(f"  {r['impl']:13s} {r['ms']:9.4f} ms {r['GBps']:9.1f} GB/s {r['pct_copy_bw']:6.1f}% copy  x{sp:5.2f}  err {r['max_abs_err_vs_eager_ref']:.2e}")
    dev_name = torch.cuda.get_device_name() if a.device == "cuda" else (os.uname().machine + " CPU, threads=" + str(torch.get_num_threads()))
    import importlib.util

    triton_v = None
    if importlib.util.find_spec("triton"):
        import triton

        triton_v = triton.__version__
    result = {"device": dev_name, "device_type": a.device, "dtype": a.dtype, "quick": a.quick,
              "torch": torch.__version__, "triton": triton_v, "cuda": torch.version.cuda, "git_sha": git_sha(),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "copy_bandwidth_GBps": bw,
              "results": rows}
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = outdir / f"ops-{a.device}{'-quick' if a.quick else ''}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


def _tup(x):
    return x if isinstance(x, tuple) else (x,)


if __name__ == "__main__":
    raise SystemExit(main())
