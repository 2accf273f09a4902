"""frame_causal_attention: reference, Triton kernel (interpreter on CPU), custom op, compile, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wmpo.ops.frame_causal_attention import (
    attention_flops,
    frame_causal_attention,
    frame_causal_attention_ref,
    frame_causal_mask,
)

try:
    from wmpo.kernels.temporal_attention import frame_causal_attention_triton
except ImportError:  # source tree without the editable install
    from kernels.temporal_attention import frame_causal_attention_triton

# (T_q, num_cached, hd): every T in {1, 5, 12}, num_cached in {0, 4}, hd in {40, 64, 72}
SHAPES = [(1, 0, 40), (1, 4, 64), (5, 4, 72), (5, 0, 40), (12, 0, 64), (12, 4, 72)]
DTYPES = [torch.float32, torch.bfloat16]


def _inputs(N, H, T_q, num_cached, hd, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, H, T_q, hd, generator=g)
    k = torch.randn(N, H, num_cached + T_q, hd, generator=g)
    v = torch.randn(N, H, num_cached + T_q, hd, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _math64(q, k, v, num_cached, scale=None):
    """Attention in float64 by explicit math (independent of SDPA)."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~frame_causal_mask(q.shape[2], num_cached), float("-inf"))
    return torch.softmax(s, -1) @ v


def _check(out, q, k, v, num_cached, scale=None):
    """Error vs float64 at most 2x the eager reference's error in the same dtype (>= 1 ulp)."""
    want = _math64(q, k, v, num_cached, scale)
    eager = frame_causal_attention_ref(q, k, v, num_cached=num_cached, scale=scale)
    eager_err = (eager.double() - want).abs().max().item()
    err = (out.double() - want).abs().max().item()
    ulp = torch.finfo(q.dtype).eps * max(1.0, want.abs().max().item())
    assert out.dtype == q.dtype and out.shape == q.shape
    assert err <= max(2 * eager_err, ulp), f"err {err:.3g} vs eager {eager_err:.3g} (ulp {ulp:.3g})"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T_q,num_cached,hd", SHAPES)
def test_reference_matches_math(T_q, num_cached, hd, dtype):
    q, k, v = _inputs(3, 2, T_q, num_cached, hd, dtype)
    out = frame_causal_attention(q, k, v, num_cached=num_cached)  # CPU: reference backend
    _check(out, q, k, v, num_cached)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), _math64(q, k, v, num_cached), rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("use_dot", [False, True], ids=["loop", "dot"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T_q,num_cached,hd", SHAPES)
def test_triton_kernel(T_q, num_cached, hd, dtype, use_dot):
    # 5 * 3 = 15 rows, block_r 8: two programs, the second one partly masked
    q, k, v = _inputs(5, 3, T_q, num_cached, hd, dtype, seed=1)
    out = frame_causal_attention_triton(q, k, v, num_cached, hd ** -0.5, use_dot=use_dot, block_r=8)
    _check(out, q, k, v, num_cached)


@pytest.mark.interpreter
@pytest.mark.parametrize("use_dot", [False, True], ids=["loop", "dot"])
def test_triton_strided_inputs_and_scale(use_dot):
    # q/k/v as permuted views of [N, T, H, hd] buffers (the DiT layout), non-default scale
    N, H, T_q, nc, hd = 4, 3, 5, 4, 72
    g = torch.Generator().manual_seed(2)
    q = torch.randn(N, T_q, H, hd, generator=g).permute(0, 2, 1, 3)
    k = torch.randn(N, nc + T_q, H, hd, generator=g).permute(0, 2, 1, 3)
    v = torch.randn(N, nc + T_q, H, hd, generator=g).permute(0, 2, 1, 3)
    assert not q.is_contiguous()
    out = frame_causal_attention_triton(q, k, v, nc, 0.3, use_dot=use_dot, block_r=16)
    _check(out, q, k, v, nc, scale=0.3)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_triton_backend(monkeypatch, dtype):
    monkeypatch.setenv("WMPO_BACKEND", "triton")
    q, k, v = _inputs(7, 2, 12, 4, 72, dtype, seed=3)
    from wmpo.ops.frame_causal_attention import backend_for

    assert backend_for(q) == "triton"
    _check(frame_causal_attention(q, k, v, num_cached=4), q, k, v, 4)
    monkeypatch.setenv("WMPO_BACKEND", "ref")
    assert backend_for(q) == "ref" and backend_for(q, "triton") == "triton"
    _check(frame_causal_attention(q, k, v, num_cached=4, backend="triton"), q, k, v, 4)


def test_cached_equals_uncached():
    """Queries of the last T_q frames with cached context K/V == full causal attention's last rows."""
    N, H, c, T_q, hd = 3, 2, 4, 8, 64
    q_all, k, v = _inputs(N, H, c + T_q, 0, hd, torch.float32, seed=4)
    full = frame_causal_attention(q_all, k, v, num_cached=0)
    cached = frame_causal_attention(q_all[:, :, c:].contiguous(), k, v, num_cached=c)
    torch.testing.assert_close(cached, full[:, :, c:], rtol=1e-6, atol=1e-6)
    # and a plain causal SDPA agrees for the uncached case
    torch.testing.assert_close(full, F.scaled_dot_product_attention(q_all, k, v, is_causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["ref", "triton"])
def test_backward_matches_autograd(monkeypatch, backend):
    monkeypatch.setenv("WMPO_BACKEND", backend)
    q, k, v = _inputs(2, 2, 5, 4, 40, torch.float32, seed=5)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = frame_causal_attention(q, k, v, num_cached=4)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(_math64(q64, k64, v64, 4), (q64, k64, v64), g.double())
    for got, w in zip((dq, dk, dv), want):
        torch.testing.assert_close(got.double(), w, rtol=1e-4, atol=1e-5)


def test_opcheck():
    q, k, v = _inputs(2, 2, 5, 4, 40, torch.float32, seed=6)
    q.requires_grad_()
    torch.library.opcheck(torch.ops.wmpo.frame_causal_attention.default, (q, k, v, 4, 0.2, ""))


def test_compile_fullgraph():
    class Temporal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(40, 40)

        def forward(self, q, k, v):
            return self.proj(frame_causal_attention(q, k, v, num_cached=4))

    torch.manual_seed(0)
    m = Temporal()
    q, k, v = _inputs(2, 2, 5, 4, 40, torch.float32, seed=7)
    want = m(q, k, v)
    torch._dynamo.reset()
    got = torch.compile(m, fullgraph=True, dynamic=False)(q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_input():
    q, k, v = _inputs(2, 2, 5, 4, 40, torch.float32)
    with pytest.raises(ValueError, match="q"):
        frame_causal_attention(q[0], k, v, num_cached=4)
    with pytest.raises(ValueError, match="q"):
        frame_causal_attention(q.to(torch.int32), k, v, num_cached=4)
    with pytest.raises(ValueError, match="k"):
        frame_causal_attention(q, k.double(), v, num_cached=4)
    with pytest.raises(ValueError, match="k"):
        frame_causal_attention(q, k, v, num_cached=3)  # T_k != num_cached + T_q
    with pytest.raises(ValueError, match="v"):
        frame_causal_attention(q, k, v[..., :32], num_cached=4)
    with pytest.raises(ValueError, match="k"):
        frame_causal_attention(q, k[:, :1], v, num_cached=4)
    with pytest.raises(ValueError, match="num_cached"):
        frame_causal_attention(q, k, v, num_cached=-1)
    with pytest.raises(ValueError, match="scale"):
        frame_causal_attention(q, k, v, num_cached=4, scale=float("nan"))
    with pytest.raises(ValueError, match="k"):
        frame_causal_attention(q, k.to("meta"), v, num_cached=4)
    with pytest.raises(ValueError, match="backend"):
        frame_causal_attention(q, k, v, num_cached=4, backend="fast")


def test_flops_count():
    # T_q = 2, no cache: 3 visible pairs, 4 * hd FLOPs each
    assert attention_flops(1, 1, 2, 0, 8) == 4 * 3 * 8
    assert attention_flops(1, 1, 2, 0, 8, causal=False) == 4 * 4 * 8


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("use_dot", [False, True], ids=["loop", "dot"])
def test_triton_cuda(dtype, use_dot):
    q, k, v = (t.cuda() for t in _inputs(64 * 4, 16, 8, 4, 72, dtype, seed=8))
    out = frame_causal_attention_triton(q, k, v, 4, 72 ** -0.5, use_dot=use_dot)
    _check(out.cpu(), q.cpu(), k.cpu(), v.cpu(), 4)


_AOT_SCRIPT = r"""
import os, sys, json
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
try:
    import wmpo.kernels.temporal_attention as ta
except ImportError:
    import kernels.temporal_attention as ta

def compile_one(use_dot, dtype, T_q, T_k, hd, block_r, num_warps, row_align=16, div16=True):
    fn = ta._frame_causal_attn_dot_kernel if use_dot else ta._frame_causal_attn_loop_kernel
    ty = {"bf16": "*bf16", "fp32": "*fp32"}[dtype]
    sig = {n: "i32" for n in fn.arg_names}
    sig.update(q_ptr=ty, k_ptr=ty, v_ptr=ty, o_ptr=ty, scale="fp32")
    cst = dict(sqt=hd, sqd=1, skt=hd, skd=1, svt=hd, svd=1, sot=hd, sod=1, T_Q=T_q, T_K=T_k, HEAD_DIM=hd, BLOCK_R=block_r,
               ROW_ALIGN=row_align)
    if use_dot:
        cst.update(BLOCK_TQ=max(16, triton.next_power_of_2(T_q)), BLOCK_TK=max(16, triton.next_power_of_2(T_k)),
                   BLOCK_D=max(16, triton.next_power_of_2(hd)), LOWP=dtype == "bf16", IS_BF16=dtype == "bf16", EMULATE=False)
    else:
        cst.update(BLOCK_TQ=triton.next_power_of_2(T_q), BLOCK_D=triton.next_power_of_2(hd), EMULATE_BF16_STORE=False)
    for k in cst:
        sig[k] = "constexpr"
    # div16=False: runtime batch/head strides Triton cannot see as multiples of 16 (hd = 72 heads of a
    # [N, T, H, hd] view), so only ROW_ALIGN can tell the compiler they are aligned
    div = ["q_ptr", "k_ptr", "v_ptr", "o_ptr"] + (["sqn", "sqh", "skn", "skh", "svn", "svh", "son", "soh"] if div16 else [])
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div}
    src = ASTSource(fn=fn, signature=sig, constexprs=cst, attrs=attrs)
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    ptx = c.asm["ptx"]
    return {"mma": ptx.count("mma.sync"), "ld_v4": ptx.count("ld.global.v4"), **ptxas_usage(ptx)}


def ptxas_usage(ptx):
    # registers and spill bytes as ptxas reports them (-v): spills happen in ptxas, not in the PTX
    import re, subprocess, tempfile
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", src, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, check=True)
    text = r.stdout + r.stderr
    regs = [int(m) for m in re.findall(r"Used (\d+) registers", text)]
    stores = [int(m) for m in re.findall(r"(\d+) bytes spill stores", text)]
    loads = [int(m) for m in re.findall(r"(\d+) bytes spill loads", text)]
    assert regs and stores and loads, text
    return {"registers": max(regs), "spill_stores": sum(stores), "spill_loads": sum(loads)}

out = {}
for use_dot, dtype, T_q, nc in [(True, "bf16", 12, 0), (True, "bf16", 8, 4), (True, "fp32", 12, 0), (False, "bf16", 12, 0)]:
    out[f"{'dot' if use_dot else 'loop'}-{dtype}-{T_q}-{nc}"] = compile_one(use_dot, dtype, T_q, T_q + nc, 72, 4 if use_dot else 2, 4)
for use_dot in (True, False):
    for align in (8, 1):
        out[f"strided-{'dot' if use_dot else 'loop'}-align{align}"] = compile_one(
            use_dot, "bf16", 12, 12, 72, 4 if use_dot else 2, 4, row_align=align, div16=False)
print(json.dumps(out))
"""


def test_triton_kernels_compile_for_sm90():
    """The GPU code path (not the interpreter) compiles to H100 PTX/cubin on this CPU machine:
    tensor-core MMAs in the dot kernel, 16-byte vector loads, and no register spills (as `ptxas -v`
    reports them) in the configurations default_config launches (bf16 dot, loop kernels). The fp32
    dot variant, which default_config never picks, may spill; its numbers are only reported."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton's bundled ptxas is missing")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(info))
    # head stride 72 (not a multiple of 16): the ROW_ALIGN promise (8 elements = 16 bytes) is what
    # vectorizes the loads; without it they are scalar
    assert info["strided-dot-align1"]["ld_v4"] == 0 and info["strided-loop-align1"]["ld_v4"] == 0, info
    info = {k: v for k, v in info.items() if not k.endswith("align1")}
    for name, r in info.items():
        if not name.startswith("dot-fp32"):
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{name}: register spills {r}"
        assert r["ld_v4"] > 0, f"{name}: loads not vectorized {r}"
        if name.startswith("dot-bf16"):
            assert r["mma"] > 0, f"{name}: no tensor-core mma {r}"


def test_row_alignment_is_what_the_strides_allow():
    """The ROW_ALIGN promise the launcher makes to the compiler divides every batch and head stride of
    q, k, v and out (dims of size 1 do not count) and is the largest such power of two up to 16."""
    try:
        from wmpo.kernels.temporal_attention import row_alignment
    except ImportError:
        from kernels.temporal_attention import row_alignment
    N, T, H, hd = 3, 5, 4, 72
    base = torch.zeros(N, T, H, hd, dtype=torch.bfloat16)
    heads_view = base.permute(0, 2, 1, 3)  # head stride 72, batch stride 5*4*72
    assert row_alignment(heads_view) == 8
    assert row_alignment(torch.zeros(N, H, T, 64)) == 16
    assert row_alignment(torch.zeros(N, H, T, 72), heads_view) == 8
    odd = torch.zeros(N, T, H, 75).permute(0, 2, 1, 3)  # head stride 75
    assert row_alignment(odd) == 1
    one_head = torch.zeros(N, 1, T, 72).as_strided((N, 1, T, 72), (T * 72, 3, 72, 1))
    assert row_alignment(one_head) == 8  # the size-1 head dim's stride 3 is never multiplied
    for t in (heads_view, odd):
        a = row_alignment(t)
        assert all(s % a == 0 for s, n in zip(t.stride()[:2], t.shape[:2]) if n > 1)
