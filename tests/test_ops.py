"""wmpo.ops: every op x every backend on this machine vs a float64 reference, gradients,
torch.compile(fullgraph=True), and input validation."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import wmpo.ops as ops

BACKENDS = ["ref"] + (["cpp"] if ops.HAS_EXTENSION else []) + (["triton"] if importlib.util.find_spec("triton") else [])
DTYPES = [torch.float32, torch.bfloat16]
# (frames, tokens_per_frame, D): every D in {72, 123, 1152}, tpf in {1, 16, 256}, frames in {1, 12}
ROW_CASES = [(12, 1, 72), (1, 256, 123), (12, 16, 1152), (1, 16, 72), (12, 256, 123)]
BF16_ULP = 2.0**-7


def _tol(out64, eager, kernel_dtype):
    """max(2 x the eager reference's error (in the test dtype) against float64, 1 bf16 ulp of the output scale)."""
    eager_err = (eager.double() - out64).abs().max().item() if out64.numel() else 0.0
    scale = out64.abs().max().item() if out64.numel() else 1.0
    return max(2 * eager_err, BF16_ULP * max(scale, 1e-6) / 2 if kernel_dtype == torch.float32 else BF16_ULP * scale)


def _check(got, ref64, eager, dtype):
    assert got.dtype == eager.dtype and got.shape == ref64.shape
    err = (got.double() - ref64).abs().max().item()
    tol = _tol(ref64, eager, dtype)
    assert err <= tol, f"error {err:.3g} > tolerance {tol:.3g}"


def _rows(frames, tpf, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = frames * tpf
    x = (torch.randn(R, D, generator=g) * 2 + 0.5).to(dtype)
    shift = torch.randn(frames, D, generator=g).to(dtype)
    scale = (0.5 * torch.randn(frames, D, generator=g)).to(dtype)
    return x, shift, scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("frames,tpf,D", ROW_CASES)
def test_adaln_modulate(backend, dtype, frames, tpf, D):
    x, shift, scale = _rows(frames, tpf, D, dtype)
    ref64 = ops.adaln_modulate_ref(x.double(), shift.double(), scale.double(), tokens_per_frame=tpf)
    eager = ops.adaln_modulate_ref(x, shift, scale, tokens_per_frame=tpf)
    got = ops.adaln_modulate(x, shift, scale, tokens_per_frame=tpf, backend=backend)
    _check(got, ref64, eager, dtype)
    # the registered custom op (the path autograd and torch.compile take) gives the same result
    assert torch.equal(torch.ops.wmpo.adaln_modulate(x, shift, scale, tpf, 1e-6, backend), got)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("frames,tpf,D", ROW_CASES)
def test_gated_residual_adaln(backend, dtype, frames, tpf, D):
    res, shift, scale = _rows(frames, tpf, D, dtype, seed=1)
    y, gate, _ = _rows(frames, tpf, D, dtype, seed=2)
    args64 = [a.double() for a in (res, y, gate, shift, scale)]
    out64, h64 = ops.gated_residual_adaln_ref(*args64, tokens_per_frame=tpf)
    e_out, e_h = ops.gated_residual_adaln_ref(res, y, gate, shift, scale, tokens_per_frame=tpf)
    out, h = ops.gated_residual_adaln(res, y, gate, shift, scale, tokens_per_frame=tpf, backend=backend)
    _check(out, out64, e_out, dtype)
    # h normalizes the rounded `out`: compare against the float64 LN of that same rounded tensor too
    h64r = ops.adaln_modulate_ref(out.double(), shift.double(), scale.double(), tokens_per_frame=tpf)
    _check(h, h64r, ops.adaln_modulate_ref(out, shift, scale, tokens_per_frame=tpf), dtype)
    _check(h, h64, e_h, dtype) if dtype == torch.float32 else None


FRAME_CASES = [((3, 12, 4, 5, 7), 4), ((2, 1, 3, 3), 0), ((2, 12, 9), 12), ((5, 1, 4, 2, 2), 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,num_context", FRAME_CASES)
def test_noisy_context(backend, dtype, shape, num_context):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(shape, generator=g).to(dtype)
    noise = torch.randn(shape, generator=g).to(dtype)
    t = torch.rand(shape[0], generator=g)
    xt64, tf64 = ops.noisy_context_ref(x0.double(), noise.double(), t.double(), num_context=num_context, t_context=0.05)
    e_xt, _ = ops.noisy_context_ref(x0, noise, t, num_context=num_context, t_context=0.05)
    xt, tf = ops.noisy_context(x0, noise, t, num_context=num_context, t_context=0.05, backend=backend)
    _check(xt, xt64, e_xt, dtype)
    assert tf.dtype == torch.float32 and torch.allclose(tf.double(), tf64.double(), atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,num_context", FRAME_CASES)
@pytest.mark.parametrize("times", ["tensor", "float", "scalar-tensor"])
def test_flow_step(backend, dtype, shape, num_context, times):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(shape, generator=g).to(dtype)
    B = shape[0]
    if times == "tensor":
        t_now, t_next = torch.rand(B, generator=g) + 0.5, torch.rand(B, generator=g) * 0.5
    elif times == "float":
        t_now, t_next = 0.9, 0.6
    else:
        t_now, t_next = torch.tensor(0.8), torch.tensor(0.3)
    f64 = lambda t: t.double() if isinstance(t, torch.Tensor) else t  # noqa: E731
    x64 = ops.flow_step_ref(x.double(), v.double(), f64(t_now), f64(t_next), num_context=num_context)
    eager = ops.flow_step_ref(x.clone(), v, t_now, t_next, num_context=num_context)
    got = x.clone()
    ret = ops.flow_step(got, v, t_now, t_next, num_context=num_context, backend=backend)
    assert ret is got
    _check(got, x64, eager, dtype)
    assert torch.equal(got[:, :num_context], x[:, :num_context])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,temperature", [((5, 7), 1.0), ((3, 56), 1.6), ((37,), 0.7)])
def test_action_logprob(backend, dtype, shape, temperature):
    g = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(*shape, 256, generator=g)).to(dtype)
    tokens = torch.randint(0, 256, shape, generator=g)
    lp64, en64 = ops.action_logprob_ref(logits.double(), tokens, temperature=temperature)
    e_lp, e_en = ops.action_logprob_ref(logits, tokens, temperature=temperature)
    lp, en = ops.action_logprob(logits, tokens, temperature=temperature, backend=backend)
    lp2, en2 = torch.ops.wmpo.action_logprob(logits, tokens, temperature, backend)
    assert torch.equal(lp, lp2) and torch.equal(en, en2)
    _check(lp, lp64, e_lp, torch.float32 if dtype == torch.float32 else dtype)
    _check(en, en64, e_en, torch.float32 if dtype == torch.float32 else dtype)


# ------------------------------------------------------------------------------------ gradients


def _grads(fn, inputs, seed):
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frames,tpf,D", [(12, 16, 72), (1, 256, 123), (3, 1, 1152)])
def test_grad_adaln_and_gated(backend, frames, tpf, D):
    x, shift, scale = _rows(frames, tpf, D, torch.float32)
    y, gate, _ = _rows(frames, tpf, D, torch.float32, seed=7)
    ins = [t.clone().requires_grad_() for t in (x, shift, scale)]
    got = _grads(lambda a, b, c: ops.adaln_modulate(a, b, c, tokens_per_frame=tpf, backend=backend), ins, 0)
    want = _grads(lambda a, b, c: ops.adaln_modulate_ref(a, b, c, tokens_per_frame=tpf), ins, 0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    ins = [t.clone().requires_grad_() for t in (x, y, gate, shift, scale)]
    got = _grads(lambda *a: ops.gated_residual_adaln(*a, tokens_per_frame=tpf, backend=backend), ins, 1)
    want = _grads(lambda *a: ops.gated_residual_adaln_ref(*a, tokens_per_frame=tpf), ins, 1)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_action_logprob(backend):
    g = torch.Generator().manual_seed(8)
    logits = (2 * torch.randn(4, 9, 256, generator=g)).requires_grad_()
    tokens = torch.randint(0, 256, (4, 9), generator=g)
    got = _grads(lambda l: ops.action_logprob(l, tokens, temperature=1.6, backend=backend), [logits], 2)
    want = _grads(lambda l: ops.action_logprob_ref(l, tokens, temperature=1.6), [logits], 2)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ torch.compile


class _AllOps(torch.nn.Module):
    def forward(self, x, shift, scale, gate, logits, tokens, lat, noise, t):
        h = ops.adaln_modulate(x, shift, scale, tokens_per_frame=4)
        out, h2 = ops.gated_residual_adaln(x, h, gate, shift, scale, tokens_per_frame=4)
        lp, ent = ops.action_logprob(logits, tokens, temperature=1.6)
        xt, tf = ops.noisy_context(lat, noise, t, num_context=2, t_context=0.05)
        xt = ops.flow_step(xt, noise, t, t * 0.5, num_context=2)
        return (h2 * out).sum() + lp.sum() + ent.sum(), xt, tf


def _compile_inputs():
    g = torch.Generator().manual_seed(9)
    x, shift, scale = _rows(3, 4, 72, torch.float32)
    gate = torch.randn(3, 72, generator=g)
    logits = torch.randn(2, 5, 256, generator=g)
    tokens = torch.randint(0, 256, (2, 5), generator=g)
    lat = torch.randn(2, 5, 4, 3, 3, generator=g)
    return [x, shift, scale, gate, logits, tokens, lat, torch.randn_like(lat), torch.rand(2, generator=g)]


@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
def test_torch_compile_fullgraph(compiler):
    torch._dynamo.reset()
    m = _AllOps()
    ins = _compile_inputs()
    for i in (0, 1, 2, 3, 4):
        ins[i].requires_grad_()
    want = m(*ins)
    want_g = torch.autograd.grad(want[0], [ins[i] for i in (0, 1, 2, 3, 4)])
    cm = torch.compile(m, fullgraph=True, backend=compiler)
    got = cm(*ins)
    got_g = torch.autograd.grad(got[0], [ins[i] for i in (0, 1, 2, 3, 4)])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ validation


def _bad_cases():
    x, shift, scale = _rows(2, 3, 8, torch.float32)
    L = torch.randn(4, 256)
    tok = torch.randint(0, 256, (4,))
    lat = torch.randn(2, 3, 4)
    meta = torch.randn(2, 8, device="meta")
    return [
        ("x", lambda: ops.adaln_modulate(x[0], shift, scale, tokens_per_frame=3)),  # wrong rank
        ("shift", lambda: ops.adaln_modulate(x, shift[:, :5], scale, tokens_per_frame=3)),  # D mismatch
        ("tokens_per_frame", lambda: ops.adaln_modulate(x, shift, scale, tokens_per_frame=4)),  # R % tpf
        ("x", lambda: ops.adaln_modulate(x.long(), shift, scale, tokens_per_frame=3)),  # non-floating
        ("scale", lambda: ops.adaln_modulate(x, shift, meta, tokens_per_frame=3)),  # other device
        ("y", lambda: ops.gated_residual_adaln(x, x[:, :4], shift, shift, scale, tokens_per_frame=3)),
        ("gate", lambda: ops.gated_residual_adaln(x, x, shift[:1], shift, scale, tokens_per_frame=3)),
        ("tokens", lambda: ops.action_logprob(L, tok + 1, temperature=1.0) if False else ops.action_logprob(L, tok.clone().fill_(256))),
        ("tokens", lambda: ops.action_logprob(L, tok - 300)),
        ("tokens", lambda: ops.action_logprob(L, tok.float())),
        ("logits", lambda: ops.action_logprob(L[:, :100], tok)),
        ("logits", lambda: ops.action_logprob(L.long(), tok)),
        ("x0", lambda: ops.noisy_context(lat[0, 0], lat[0, 0], torch.rand(2), num_context=1, t_context=0.05)),
        ("t", lambda: ops.noisy_context(lat, lat, torch.rand(3), num_context=1, t_context=0.05)),
        ("num_context", lambda: ops.noisy_context(lat, lat, torch.rand(2), num_context=4, t_context=0.05)),
        ("v", lambda: ops.flow_step(lat, lat[:, :2], 1.0, 0.5, num_context=1)),
        ("t_next", lambda: ops.flow_step(lat, lat, 1.0, torch.rand(3), num_context=1)),
        ("x", lambda: ops.flow_step(lat.int(), lat, 1.0, 0.5, num_context=1)),
    ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_input_raises_value_error(i):
    name, call = _bad_cases()[i]
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


def test_resolve_backend_and_env(monkeypatch):
    monkeypatch.setenv("WMPO_BACKEND", "ref")
    assert ops.resolve_backend("cpu") == "ref"
    monkeypatch.setenv("WMPO_BACKEND", "auto")
    assert ops.resolve_backend("cpu") == ("cpp" if ops.HAS_EXTENSION else "ref")
    with pytest.raises(ValueError, match="^backend"):
        ops.resolve_backend("cpu", "fast")


def test_missing_extension_falls_back_to_ref_with_one_warning():
    """Without wmpo._C the ops still work (reference) and warn once, loudly."""
    import subprocess
    import sys

    code = """
import sys, warnings
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "wmpo._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
import torch, wmpo.ops as ops
assert not ops.HAS_EXTENSION
x = torch.randn(4, 8); s = torch.randn(2, 8)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    a = ops.adaln_modulate(x, s, s, tokens_per_frame=2)
    b = ops.adaln_modulate(x, s, s, tokens_per_frame=2)
msgs = [str(m.message) for m in w if "reference" in str(m.message)]
assert len(msgs) == 1, msgs
assert torch.equal(a, ops.adaln_modulate_ref(x, s, s, tokens_per_frame=2))
print("ok")
"""
    env = {**__import__("os").environ, "WMPO_BACKEND": "auto"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
