"""The ecosystem layouts of the fused ops (issue 14, part 2): x [*B, N, D] / [*B, F, S, D] with
modulation [*B, F, D] / [*B, D], LayerNorm weight/bias, the norm-free modulate and gated_residual,
flow_step(frame_dim=), and the fallback rule (warn once naming the reason; raise for an explicit
backend or WMPO_STRICT=1). Each result is checked against the math written out here (broadcasting,
not the ops' own reference) in float64, within the 2x-bf16 rule of tests/test_ops.py."""
from __future__ import annotations

import importlib.util
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import wmpo.ops as ops
from wmpo.utils import logging as wlog

BACKENDS = ["ref"] + (["cpp"] if ops.HAS_EXTENSION else []) + (
    ["triton"] if importlib.util.find_spec("triton") and os.environ.get("TRITON_INTERPRET") == "1" else [])
BF16_ULP = 2.0**-7
# (x shape, modulation shape): [B, N, D] + [B, F, D]; [B, F, S, D] + [B, F, D]; [B, N, D] + [B, D];
# two batch dims; the 2-D kernel form
LAYOUTS = [((2, 12, 40), (2, 3, 40)), ((2, 3, 4, 40), (2, 3, 40)), ((2, 12, 40), (2, 40)),
           ((2, 2, 6, 40), (2, 2, 3, 40)), ((12, 40), (3, 40))]


def _tol(out64, eager, dtype):
    """max(2 x the eager reference's error against float64, 1 bf16 ulp of the output scale (half for fp32))."""
    eager_err = (eager.double() - out64).abs().max().item()
    scale = out64.abs().max().item()
    return max(2 * eager_err, BF16_ULP * scale / (2 if dtype == torch.float32 else 1))


def _check(got, want64, eager, dtype):
    assert got.shape == want64.shape and got.dtype == eager.dtype
    err = (got.double() - want64).abs().max().item()
    assert err <= _tol(want64, eager, dtype), f"error {err:.3g} > {_tol(want64, eager, dtype):.3g}"


def _per_token(m, x_shape):
    """Modulation [*B, F, D] / [*B, D] broadcast to x's shape the way the models write it."""
    if m.dim() == len(x_shape):  # [*B, F, D] against [*B, N, D]: repeat each frame N / F times
        return m.repeat_interleave(x_shape[-2] // m.shape[-2], dim=-2)
    while m.dim() < len(x_shape):
        m = m.unsqueeze(-2)
    return m.expand(x_shape)


def _inputs(x_shape, m_shape, dtype, n_mod, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(x_shape, generator=g) * 2 + 0.5).to(dtype)
    mods = [(0.5 * torch.randn(m_shape, generator=g)).to(dtype) for _ in range(n_mod)]
    D = x_shape[-1]
    weight = (1 + 0.2 * torch.randn(D, generator=g)).to(dtype)
    bias = (0.2 * torch.randn(D, generator=g)).to(dtype)
    return x, mods, weight, bias


def _adaln_math(x, shift, scale, weight=None, bias=None):
    n = F.layer_norm(x, (x.shape[-1],), weight, bias, eps=1e-6)
    return n * (1 + _per_token(scale, x.shape)) + _per_token(shift, x.shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("x_shape,m_shape", LAYOUTS)
def test_adaln_modulate_layouts(backend, dtype, affine, x_shape, m_shape):
    x, (shift, scale), w, b = _inputs(x_shape, m_shape, dtype, 2)
    w, b = (w, b) if affine else (None, None)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    want = _adaln_math(d(x), d(shift), d(scale), d(w), d(b))
    eager = ops.adaln_modulate_ref(x, shift, scale, weight=w, bias=b)
    got = ops.adaln_modulate(x, shift, scale, weight=w, bias=b, backend=backend)
    _check(got, want, eager, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("x_shape,m_shape", LAYOUTS)
def test_gated_residual_adaln_layouts(backend, dtype, affine, x_shape, m_shape):
    res, (gate, shift, scale), w, b = _inputs(x_shape, m_shape, dtype, 3, seed=1)
    y = torch.randn(x_shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    w, b = (w, b) if affine else (None, None)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    out64 = d(res) + _per_token(d(gate), x_shape) * d(y)
    e_out, _ = ops.gated_residual_adaln_ref(res, y, gate, shift, scale, weight=w, bias=b)
    out, h = ops.gated_residual_adaln(res, y, gate, shift, scale, weight=w, bias=b, backend=backend)
    _check(out, out64, e_out, dtype)
    # h against the math applied to the op's own (rounded) out
    _check(h, _adaln_math(out.double(), d(shift), d(scale), d(w), d(b)),
           ops.adaln_modulate_ref(out, shift, scale, weight=w, bias=b), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("x_shape,m_shape", LAYOUTS)
def test_modulate_and_gated_residual(backend, dtype, x_shape, m_shape):
    x, (shift, scale, gate), _, _ = _inputs(x_shape, m_shape, dtype, 3, seed=3)
    y = torch.randn(x_shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    d = lambda t: t.double()  # noqa: E731
    want = d(x) * (1 + _per_token(d(scale), x_shape)) + _per_token(d(shift), x_shape)
    _check(ops.modulate(x, shift, scale, backend=backend), want, ops.modulate_ref(x, shift, scale), dtype)
    want = d(x) + _per_token(d(gate), x_shape) * d(y)
    _check(ops.gated_residual(x, y, gate, backend=backend), want, ops.gated_residual_ref(x, y, gate), dtype)


def test_gated_residual_mixed_dtype_keeps_the_fp32_stream():
    """Under autocast the residual stream is fp32 and the branch bf16: out stays fp32, no fallback."""
    g = torch.Generator().manual_seed(5)
    res = torch.randn(2, 12, 40, generator=g)
    y, gate = torch.randn(2, 12, 40, generator=g).bfloat16(), torch.randn(2, 3, 40, generator=g).bfloat16()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ops.gated_residual(res, y, gate)
    assert out.dtype == torch.float32
    want = res.double() + _per_token(gate.double(), res.shape) * y.double()
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape,m_shape", [((2, 12, 40), (2, 3, 40)), ((2, 12, 40), (2, 40))])
def test_layout_gradients_match_the_math(backend, x_shape, m_shape):
    """Gradients of x, y and every per-frame tensor and of weight/bias, through the layouts and the fold."""
    res, (gate, shift, scale), w, b = _inputs(x_shape, m_shape, torch.float32, 3, seed=6)
    y = torch.randn(x_shape, generator=torch.Generator().manual_seed(7))
    cot = torch.randn(x_shape, generator=torch.Generator().manual_seed(8))

    def grads(fused):
        leaves = [t.clone().requires_grad_(True) for t in (res, y, gate, shift, scale, w, b)]
        r, yy, gt, sh, sc, ww, bb = leaves
        if fused:
            h = ops.adaln_modulate(r, sh, sc, weight=ww, bias=bb, backend=backend)
            out, h2 = ops.gated_residual_adaln(r, yy, gt, sh, sc, weight=ww, bias=bb, backend=backend)
            m = ops.modulate(h2, sh, sc, backend=backend) + ops.gated_residual(out, yy, gt, backend=backend)
        else:
            h = _adaln_math(r, sh, sc, ww, bb)
            out = r + _per_token(gt, r.shape) * yy
            h2 = _adaln_math(out, sh, sc, ww, bb)
            m = h2 * (1 + _per_token(sc, r.shape)) + _per_token(sh, r.shape) + out + _per_token(gt, r.shape) * yy
        ((h + m) * cot).sum().backward()
        return [t.grad for t in leaves]

    for name, a, b_ in zip(("residual", "y", "gate", "shift", "scale", "weight", "bias"), grads(True), grads(False)):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-4, msg=name)


def test_layout_errors_name_the_argument():
    x = torch.randn(2, 10, 8)
    with pytest.raises(ValueError, match=r"^x: 10 tokens .* not a multiple of the 3 frames"):
        ops.adaln_modulate(x, torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match=r"^shift: expected \[\*B, F, D\] or \[\*B, D\]"):
        ops.adaln_modulate(x, torch.randn(3, 5, 8), torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match=r"^scale: expected shape \(2, 5, 8\)"):
        ops.adaln_modulate(x, torch.randn(2, 5, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"^weight"):
        ops.adaln_modulate(x, torch.randn(2, 8), torch.randn(2, 8), weight=torch.ones(7))
    with pytest.raises(ValueError, match=r"^tokens_per_frame"):
        ops.adaln_modulate(x, torch.randn(2, 5, 8), torch.randn(2, 5, 8), tokens_per_frame=5)
    with pytest.raises(ValueError, match=r"^y: expected shape"):
        ops.gated_residual(x, x[:, :5], torch.randn(2, 8))


# ------------------------------------------------------------------------------------ flow_step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample_t", [False, True])
def test_flow_step_frame_dim_updates_only_generated_frames(backend, per_sample_t):
    """Open-Sora latents [B, C, T, H, W]: frame_dim=2 keeps the context frames (along T) and every
    channel; the old default (frames on dim 1) would have updated channels instead."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 5, 3, 3, generator=g)
    v = torch.randn(2, 4, 5, 3, 3, generator=g)
    t_now, t_next = (torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.5])) if per_sample_t else (0.9, 0.7)
    want = x.clone()
    dt = (torch.as_tensor(t_next) - torch.as_tensor(t_now)).reshape(-1, 1, 1, 1, 1)
    want[:, :, 2:] += dt * v[:, :, 2:]
    got = x.clone()
    ops.flow_step(got, v, t_now, t_next, num_context=2, frame_dim=2, backend=backend)
    torch.testing.assert_close(got, want)
    assert torch.equal(got[:, :, :2], x[:, :, :2])
    got_neg = x.clone()
    ops.flow_step(got_neg, v, t_now, t_next, num_context=2, frame_dim=-3, backend=backend)
    assert torch.equal(got_neg, got)


def test_flow_step_strided_view_warns_once_and_stays_correct(monkeypatch):
    monkeypatch.setattr(wlog, "_warned", set())
    g = torch.Generator().manual_seed(10)
    base = torch.randn(2, 4, 5, 6, generator=g)  # [B, C, T, S]; the caller's view is [B, T, C, S]
    x, v = base.transpose(1, 2), torch.randn(2, 4, 5, 6, generator=g).transpose(1, 2)
    want = x.clone()
    want[:, 1:] += -0.25 * v[:, 1:]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ops.flow_step(x, v, 0.75, 0.5, num_context=1)
        ops.flow_step(x.clone(), v, 0.75, 0.5, num_context=1)
    torch.testing.assert_close(x, want)
    msgs = [str(m.message) for m in w if "non-contiguous" in str(m.message)]
    assert len(msgs) == 1, [str(m.message) for m in w]
    if ops.HAS_EXTENSION:  # an explicit fused backend refuses to fall back
        with pytest.raises(ops.BackendUnavailableError, match="non-contiguous"):
            ops.flow_step(x, v, 0.75, 0.5, num_context=1, backend="cpp")


@pytest.mark.parametrize("x_dtype,v_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)], ids=str)
def test_flow_step_mixed_dtypes_are_fused(x_dtype, v_dtype):
    """fp32 latents with a bf16 velocity (autocast) take the kernels (v cast once), no fallback warning."""
    g = torch.Generator().manual_seed(11)
    x, v = torch.randn(2, 5, 3, 4, generator=g).to(x_dtype), torch.randn(2, 5, 3, 4, generator=g).to(v_dtype)
    want = ops.flow_step_ref(x.clone(), v, 0.8, 0.55, num_context=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ops.flow_step(x.clone(), v, 0.8, 0.55, num_context=2)
    assert got.dtype == x_dtype
    tol = 1e-6 if x_dtype == torch.float32 else 2 * BF16_ULP
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_flow_step_frame_dim_errors():
    x = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match="^frame_dim"):
        ops.flow_step(x, x.clone(), 1.0, 0.5, num_context=1, frame_dim=0)
    with pytest.raises(ValueError, match="^frame_dim"):
        ops.flow_step(x, x.clone(), 1.0, 0.5, num_context=1, frame_dim=3)
    with pytest.raises(ValueError, match="^num_context"):
        ops.flow_step(x, x.clone(), 1.0, 0.5, num_context=6, frame_dim=2)


# ------------------------------------------------------------------------------------ fallbacks


def test_fallback_warns_once_naming_the_reason(monkeypatch):
    monkeypatch.setattr(wlog, "_warned", set())
    monkeypatch.delenv("WMPO_STRICT", raising=False)
    x, s32 = torch.randn(8, 16).bfloat16(), torch.randn(2, 16)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ops.adaln_modulate(x, s32, s32)
        ops.adaln_modulate(x, s32, s32)
    msgs = [str(m.message) for m in w]
    if BACKENDS != ["ref"]:
        assert len(msgs) == 1 and "torch.bfloat16" in msgs[0] and "torch.float32" in msgs[0], msgs


def test_strict_mode_and_explicit_backend_raise(monkeypatch):
    x, s32 = torch.randn(8, 16).bfloat16(), torch.randn(2, 16)
    with pytest.raises(ops.BackendUnavailableError, match="not a CUDA tensor.*backend= was given"):
        ops.adaln_modulate(x.float(), s32, s32, backend="cuda")
    monkeypatch.setenv("WMPO_STRICT", "1")
    if ops.HAS_EXTENSION:
        with pytest.raises(ops.BackendUnavailableError, match="WMPO_STRICT=1"):
            ops.adaln_modulate(x, s32, s32)
    monkeypatch.setenv("WMPO_BACKEND", "cuda")
    with pytest.raises(ops.BackendUnavailableError, match="WMPO_STRICT=1"):
        ops.resolve_backend("cpu")
    monkeypatch.delenv("WMPO_STRICT")
    monkeypatch.setattr(wlog, "_warned", set())
    with pytest.warns(RuntimeWarning, match="backend 'cuda' is not available for cpu tensors"):
        ops.resolve_backend("cpu")  # from the environment, not strict: falls back, warns
