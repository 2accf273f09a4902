"""Part 1 of bench/gpu_check.sh: every fused op and the attention kernel, compiled (not interpreted),
against float64 at production shapes, with GB/s, backward and torch.compile; and a CUDA-graph capture
of a tiny-preset rollout chunk that must report it was captured and match eager.

Each check is PASS/FAIL by the project's rule: the kernel's error against float64 at most twice the
error of the eager reference in the same dtype (at least half a bf16 ulp of the output's scale).
Errors are over all elements; `err_rows` also gives them for the first, last and random rows.

    python bench/gpu_check_ops.py                          # GPU: production shapes
    python bench/gpu_check_ops.py --quick --device cpu     # the dry run: tiny shapes, same code paths
Writes bench/results/gpu_check-part1-<device>-<date>.json; exit status 1 if a check failed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import device_name, git_sha, time_ms  # noqa: E402
from bench.common import sync as _sync  # noqa: E402
import wmpo.ops as ops  # noqa: E402
from wmpo.ops.frame_causal_attention import frame_causal_attention, frame_causal_attention_ref  # noqa: E402

BF16_ULP = 2.0**-7


# ------------------------------------------------------------------------------------------- rules


def tolerance(want64: torch.Tensor, eager: torch.Tensor, out_dtype: torch.dtype) -> float:
    """max(2 x the eager reference's error against float64, half a bf16 ulp (fp32 outputs) or one bf16
    ulp (low-precision outputs) of the output's scale)."""
    if want64.numel() == 0:
        return 0.0
    eager_err = (eager.double() - want64).abs().max().item()
    scale = max(want64.abs().max().item(), 1e-6)
    floor = BF16_ULP * scale / 2 if out_dtype in (torch.float32, torch.float64) else BF16_ULP * scale
    return max(2 * eager_err, floor)


def row_errors(got: torch.Tensor, want64: torch.Tensor, n: int = 256, seed: int = 0) -> dict[str, float]:
    """Max error over the first n, the last n and n random rows (dim 0) - where tile and mask edges are."""
    R = got.shape[0]
    if R == 0:
        return {}
    g = torch.Generator().manual_seed(seed)
    idx = {"first": torch.arange(min(n, R)), "last": torch.arange(max(0, R - n), R),
           "random": torch.randint(0, R, (min(n, R),), generator=g)}
    return {k: (got[i.to(got.device)].double() - want64[i.to(want64.device)]).abs().max().item() for k, i in idx.items()}


def _tup(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def compare(got, want64, eager) -> dict[str, Any]:
    """Error and tolerance of each output; ok when every output is within its tolerance and finite."""
    outs = []
    ok = True
    for g, w, e in zip(_tup(got), _tup(want64), _tup(eager)):
        err = (g.double() - w).abs().max().item() if g.numel() else 0.0
        tol = tolerance(w, e, g.dtype)
        fin = bool(torch.isfinite(g).all()) if g.is_floating_point() else True
        ok = ok and err <= tol and fin and g.dtype == e.dtype and g.shape == e.shape
        outs.append({"err": err, "tol": tol, "finite": fin, "err_rows": row_errors(g, w)})
    return {"ok": ok, "outputs": outs}


def timer(device: torch.device, reps: int) -> Callable[[Callable[[], Any]], float]:
    """-> median ms of fn (CUDA events on the GPU, wall clock on the CPU), after one warm-up call."""
    return lambda fn: statistics.median(time_ms(fn, device, reps, warmup=1))


# ------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One op at one shape and dtype mix: inputs, float64 reference, eager reference, fused call."""

    op: str
    label: str
    inputs: dict[str, torch.Tensor]
    ref: Callable[..., Any]  # (**inputs) -> outputs, the plain-PyTorch reference
    fused: Callable[..., Any]  # (backend, **inputs) -> outputs, the public op
    nbytes: int
    grad_inputs: tuple[str, ...] = ()
    timed: Callable[[str], Any] | None = None  # (backend) -> what is timed, when not `fused` (in-place ops)


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _adaln_cases(rnd, mix: str, F_: int, tpf: int, D: int) -> list[Case]:
    """adaln_modulate and gated_residual_adaln on F_ frames of tpf rows of width D; `mix` names the rows'
    and the modulation's dtypes (bf16, fp32+bf16 as under autocast, fp32)."""
    R = F_ * tpf
    rows_dt = torch.bfloat16 if mix == "bf16" else torch.float32
    mod_dt = torch.float32 if mix == "fp32" else torch.bfloat16
    x = rnd(R, D, dtype=rows_dt, scale=2.0, shift=0.5)
    y = rnd(R, D, dtype=mod_dt)
    sh, gt = rnd(F_, D, dtype=mod_dt), rnd(F_, D, dtype=mod_dt)
    sc = rnd(F_, D, scale=0.5, dtype=mod_dt)
    label = f"R={R} D={D} tpf={tpf} {mix}"
    return [
        Case("adaln_modulate", label, dict(x=x, shift=sh, scale=sc),
             lambda x, shift, scale: ops.adaln_modulate_ref(x, shift, scale, tokens_per_frame=tpf),
             lambda be, x, shift, scale: ops.adaln_modulate(x, shift, scale, tokens_per_frame=tpf, backend=be),
             _nbytes(x, sh, sc, x), grad_inputs=("x", "shift", "scale")),
        Case("gated_residual_adaln", label, dict(residual=x, y=y, gate=gt, shift=sh, scale=sc),
             lambda residual, y, gate, shift, scale: ops.gated_residual_adaln_ref(
                 residual, y, gate, shift, scale, tokens_per_frame=tpf),
             lambda be, residual, y, gate, shift, scale: ops.gated_residual_adaln(
                 residual, y, gate, shift, scale, tokens_per_frame=tpf, backend=be),
             _nbytes(x, y, gt, sh, sc, x, x), grad_inputs=("residual", "y", "gate", "shift", "scale")),
    ]


def cases(device: torch.device, quick: bool) -> list[Case]:
    """Production shapes (64 trajectories, 12 frames of 256 tokens, D 1152; paper latents; the policy's
    tokens; temporal attention at the cached step), or tiny odd shapes with --quick."""
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, dtype=torch.bfloat16, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dtype)

    traj, frames, tpf, D = (2, 3, 4, 123) if quick else (64, 12, 256, 1152)
    F_ = traj * frames
    out: list[Case] = []
    # the AdaLN rows: bf16 and autocast's fp32+bf16 at the paper's D (the CUDA warp-per-row kernel), and
    # one long-row shape (D 4608, fp32) that takes CUDA's block-per-row kernel (csrc/launch_geometry.h)
    adaln_shapes = [(mix, F_, tpf, D) for mix in ("bf16", "fp32+bf16")]
    if not quick:
        adaln_shapes.append(("fp32", 48, 64, 4608))
    for mix, n_frames, per_frame, width in adaln_shapes:
        out.extend(_adaln_cases(rnd, mix, n_frames, per_frame, width))
    lat = (traj, frames, 4, 4, 4) if quick else (traj, frames, 4, 32, 32)
    c = min(4, frames - 1)
    x0, nz = rnd(*lat), rnd(*lat)
    t = torch.rand(traj, generator=g, device=device)
    out.append(Case("noisy_context", f"latents {list(lat)} c={c} bf16", dict(x0=x0, noise=nz, t=t),
                    lambda x0, noise, t: ops.noisy_context_ref(x0, noise, t, num_context=c, t_context=0.05),
                    lambda be, x0, noise, t: ops.noisy_context(x0, noise, t, num_context=c, t_context=0.05, backend=be),
                    _nbytes(x0, nz, x0) + traj * frames * 4))
    t2 = (t * 0.9).contiguous()
    n_pred = x0.numel() // frames * (frames - c)
    scratch = x0.clone()  # timed in place (the checked calls work on clones of x0)
    out.append(Case("flow_step", f"latents {list(lat)} c={c} bf16", dict(x=x0, v=nz, t_now=t, t_next=t2),
                    lambda x, v, t_now, t_next: ops.flow_step_ref(x.clone(), v, t_now, t_next, num_context=c),
                    lambda be, x, v, t_now, t_next: ops.flow_step(x.clone(), v, t_now, t_next, num_context=c, backend=be),
                    3 * n_pred * x0.element_size(),
                    timed=lambda be: ops.flow_step(scratch, nz, t, t2, num_context=c, backend=be)))
    n_tok = 64 if quick else 64 * 8 * 56
    logits = rnd(n_tok, 256, scale=3.0)
    tokens = torch.randint(0, 256, (n_tok,), generator=g, device=device)
    out.append(Case("action_logprob", f"{n_tok} tokens x 256 bf16", dict(logits=logits, tokens=tokens),
                    lambda logits, tokens: ops.action_logprob_ref(logits, tokens, temperature=1.6),
                    lambda be, logits, tokens: ops.action_logprob(logits, tokens, temperature=1.6, backend=be),
                    _nbytes(logits, tokens) + 2 * n_tok * 4, grad_inputs=("logits",)))
    N, H, T_q, nc, hd = (8, 2, 3, 2, 72) if quick else (64 * 256, 16, 8, 4, 72)
    q, k, v = rnd(N, H, T_q, hd), rnd(N, H, nc + T_q, hd), rnd(N, H, nc + T_q, hd)
    out.append(Case("frame_causal_attention", f"N={N} H={H} T_q={T_q} cached={nc} hd={hd} bf16", dict(q=q, k=k, v=v),
                    lambda q, k, v: frame_causal_attention_ref(q, k, v, num_cached=nc),
                    lambda be, q, k, v: frame_causal_attention(q, k, v, num_cached=nc, backend=be),
                    _nbytes(q, k, v, q), grad_inputs=("q", "k", "v")))
    return out


def backends_for(case: Case, device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["cpp" if ops.HAS_EXTENSION and case.op != "frame_causal_attention" else "ref", "triton"]
    if case.op == "frame_causal_attention":
        return ["triton"]
    return ["triton"] + (["cuda"] if ops.extension_has_cuda() else [])


# ------------------------------------------------------------------------------------------- checks


def _f64(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}


def check_forward(case: Case, backend: str, bench) -> dict[str, Any]:
    want64 = case.ref(**_f64(case.inputs))
    eager = case.ref(**case.inputs)
    got = case.fused(backend, **case.inputs)
    res = compare(got, want64, eager)
    ms = bench((lambda: case.timed(backend)) if case.timed else (lambda: case.fused(backend, **case.inputs)))
    res.update(ms=ms, GBps=case.nbytes / ms / 1e6, bytes=case.nbytes)
    return res


def check_backward(case: Case, backend: str, seed: int = 1) -> dict[str, Any]:
    """Gradients of a random linear function of the outputs, against float64 autograd of the reference."""
    names = case.grad_inputs

    def grads(fn, inputs):
        leaves = {k: (v.detach().clone().requires_grad_(k in names) if v.is_floating_point() else v)
                  for k, v in inputs.items()}
        outs = _tup(fn(**leaves))
        g = torch.Generator().manual_seed(seed)
        loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
                   for o in outs if o.is_floating_point())
        return tuple(torch.autograd.grad(loss, [leaves[n] for n in names]))

    want64 = grads(case.ref, _f64(case.inputs))
    eager = grads(case.ref, case.inputs)
    got = grads(lambda **kw: case.fused(backend, **kw), case.inputs)
    return compare(got, want64, eager)


def check_compile(device: torch.device, quick: bool, backend: str | None) -> dict[str, Any]:
    """torch.compile(fullgraph=True) of a function calling every fused op matches the eager ops."""
    g = torch.Generator().manual_seed(5)
    R, D, tpf = (16, 72, 4) if quick else (4096, 1152, 256)
    x = torch.randn(R, D, generator=g).to(device, torch.bfloat16)
    sh, sc = (0.3 * torch.randn(R // tpf, D, generator=g)).to(device, torch.bfloat16), (0.3 * torch.randn(R // tpf, D, generator=g)).to(device, torch.bfloat16)
    logits = torch.randn(64, 256, generator=g).to(device, torch.bfloat16)
    tokens = torch.randint(0, 256, (64,), generator=g).to(device)
    lat = torch.randn(2, 6, 4, 8, 8, generator=g).to(device, torch.bfloat16)
    t = torch.rand(2, generator=g).to(device)

    def f(x, sh, sc, logits, tokens, lat, t):
        h = ops.adaln_modulate(x, sh, sc, tokens_per_frame=tpf)
        out, h2 = ops.gated_residual_adaln(x, h, sh, sh, sc, tokens_per_frame=tpf)
        lp, ent = ops.action_logprob(logits, tokens, temperature=1.6)
        xt, tf = ops.noisy_context(lat, lat * 0.5, t, num_context=2, t_context=0.05)
        ops.flow_step(xt, lat, t, t * 0.5, num_context=2)
        return h2, lp, ent, xt, tf

    t0 = time.perf_counter()
    try:
        kw = {"backend": backend} if backend else {}
        cf = torch.compile(f, fullgraph=True, dynamic=False, **kw)
        got = cf(x, sh, sc, logits, tokens, lat, t)
    except Exception as e:  # noqa: BLE001 - a failure is the finding
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000], "compile_s": time.perf_counter() - t0}
    want = f(x, sh, sc, logits, tokens, lat, t)
    errs = [(a.double() - b.double()).abs().max().item() for a, b in zip(got, want)]
    return {"ok": all(e <= 1e-2 for e in errs), "max_abs_diff_vs_eager": errs, "compile_s": time.perf_counter() - t0,
            "compile_backend": backend or "inductor"}


def check_graph_chunk(device: torch.device, quick: bool) -> dict[str, Any]:
    """A micro-preset rollout chunk captured in a CUDA graph: captured, and equal to eager (greedy)."""
    from bench.common import preset_config
    from bench.rollout_loop import INSTRUCTION, build_models, engine_factory
    from wmpo.rollout.engine import RolloutConfig

    torch.manual_seed(0)
    cfg = preset_config("micro")  # the smallest pipeline preset (wmpo.config), 32 x 32 frames
    models = build_models(cfg, device, None)
    make = engine_factory(models, 2, device)
    B, H = 4, cfg.image_size
    frames = torch.randint(0, 256, (B, H, H, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    K = int(models["policy"].cfg.chunk_len)
    steps = 4 * K  # 4 chunks: 2 eager warm-up chunks, the capture, then replays
    res: dict[str, Any] = {}

    def run(cuda_graph: bool):
        eng = make(RolloutConfig(num_slots=B, cuda_graph=cuda_graph))
        outs = []
        for _ in range(2):  # the second call replays the graph captured in the first
            torch.manual_seed(3)
            batch, _ = eng.rollout_fixed(frames, INSTRUCTION, steps, 0.0, seed=0, early_exit=False)
            outs.append(batch)
        return eng, outs

    eng_g, got = run(True)
    _, want = run(False)
    res["graph_captured"] = eng_g.runner.graph_captured
    res["graph_failed"] = eng_g.runner.graph_failed
    diffs = [(a.obs.float() - b.obs.float()).abs().mean().item() for a, b in zip(got, want)]
    same_tokens = all(torch.equal(a.tokens.cpu(), b.tokens.cpu()) for a, b in zip(got, want))
    res.update(obs_mean_abs_diff=diffs, tokens_equal=same_tokens)
    # on the CPU nothing is captured (the dry run checks that the path runs and matches eager)
    res["ok"] = same_tokens and max(diffs) < 1.0 and (eng_g.runner.graph_captured or device.type != "cuda")
    return res


# ------------------------------------------------------------------------------------------- main


def run_checks(device: torch.device, quick: bool, reps: int, compile_backend: str | None) -> dict[str, Any]:
    bench = timer(device, reps)
    checks: list[dict[str, Any]] = []
    for case in cases(device, quick):
        for be in backends_for(case, device):
            row: dict[str, Any] = {"op": case.op, "shape": case.label, "backend": be}
            try:
                row["forward"] = check_forward(case, be, bench)
                if case.grad_inputs:
                    row["backward"] = check_backward(case, be)
                row["ok"] = row["forward"]["ok"] and row.get("backward", {"ok": True})["ok"]
            except Exception as e:  # noqa: BLE001 - report it and go on with the other checks
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
            checks.append(row)
            f = row.get("forward", {})
            if f:  # the output closest to its tolerance
                w = max(f["outputs"], key=lambda o: o["err"] / max(o["tol"], 1e-30))
                detail = f"{f['ms']:9.3f} ms {f['GBps']:8.1f} GB/s err {w['err']:.2e} (tol {w['tol']:.2e})"
                if "backward" in row:
                    detail += f" backward {'ok' if row['backward']['ok'] else 'FAIL'}"
            else:
                detail = row.get("error", "")
            print(f"{'PASS' if row['ok'] else 'FAIL'} {case.op:24s} {be:7s} {case.label:40s} {detail}", flush=True)
    comp = check_compile(device, quick, compile_backend)
    print(f"{'PASS' if comp['ok'] else 'FAIL'} torch.compile(fullgraph) of the fused ops  {comp.get('compile_s', 0):.1f} s "
          + comp.get("error", ""), flush=True)
    try:
        graph = check_graph_chunk(device, quick)
    except Exception as e:  # noqa: BLE001
        graph = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    print(f"{'PASS' if graph['ok'] else 'FAIL'} CUDA-graph chunk (micro preset): captured={graph.get('graph_captured')} "
          f"tokens_equal={graph.get('tokens_equal')} obs_diff={graph.get('obs_mean_abs_diff')} {graph.get('error', '')}",
          flush=True)
    return {"ops": checks, "compile": comp, "graph_chunk": graph,
            "ok": all(c["ok"] for c in checks) and comp["ok"] and graph["ok"]}


def environment(device: torch.device) -> dict[str, Any]:
    import importlib.util

    triton_v = None
    if importlib.util.find_spec("triton"):
        import triton

        triton_v = triton.__version__
    return {"device": device_name(device), "device_type": device.type, "git_sha": git_sha(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "triton": triton_v, "cuda": torch.version.cuda,
                         "python": platform.python_version()},
            "extension": {"present": ops.HAS_EXTENSION, "cuda_kernels": ops.extension_has_cuda()},
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}


def write_result(result: dict[str, Any], out: str, part: str, device: torch.device) -> Path:
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = outdir / f"gpu_check-{part}-{device.type}{'-dryrun' if result.get('quick') else ''}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (the CPU dry run)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20 on GPU, 2 quick)")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; eager in --quick)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_check_ops: TRITON_INTERPRET=1 on a GPU would test the interpreter, not the compiled kernels", file=sys.stderr)
        return 2
    reps = a.reps or (2 if a.quick else 20)
    compile_backend = a.compile_backend or ("eager" if a.quick and device.type != "cuda" else None)
    t0 = time.perf_counter()
    result = {"check": "gpu_check part 1", "quick": a.quick, **environment(device)}
    result.update(run_checks(device, a.quick, reps, compile_backend))
    result["wall_s"] = time.perf_counter() - t0
    path = write_result(result, a.out, "part1", device)
    n_fail = sum(not c["ok"] for c in result["ops"]) + (not result["compile"]["ok"]) + (not result["graph_chunk"]["ok"])
    print(f"gpu_check part 1: {'PASS' if result['ok'] else f'{n_fail} FAILED'} in {result['wall_s']:.0f} s; wrote {path}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
