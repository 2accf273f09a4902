"""Mixed-dtype AdaLN fusion (issue 18, item 6): under autocast the residual stream is fp32 and the
modulation / linear outputs are bf16; the fused kernels take that mix directly (no fallback to the
reference), within the 2x-bf16 error rule, forward and backward, and the world model uses them."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import pytest
import torch

import wmpo.ops as ops

# Triton on CPU tensors only in the interpreter (on a GPU machine the gpu tests cover Triton)
FUSED = (["cpp"] if ops.HAS_EXTENSION else []) + (
    ["triton"] if importlib.util.find_spec("triton") and os.environ.get("TRITON_INTERPRET") == "1" else [])
BF16_ULP = 2.0**-7


def _inputs(frames, tpf, D, mod_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = frames * tpf
    res = torch.randn(R, D, generator=g) * 2 + 0.5  # fp32 residual stream
    y = torch.randn(R, D, generator=g).to(mod_dtype)  # a bf16 linear output
    gate, shift = (torch.randn(frames, D, generator=g).to(mod_dtype) for _ in range(2))
    scale = (0.5 * torch.randn(frames, D, generator=g)).to(mod_dtype)
    return res, y, gate, shift, scale


def _tol(out64, eager):
    """2 x the eager reference's error against float64, at least half a bf16 ulp of the output scale."""
    eager_err = (eager.double() - out64).abs().max().item()
    return max(2 * eager_err, BF16_ULP * out64.abs().max().item() / 2)


@contextlib.contextmanager
def no_reference():
    """Inside, the reference AdaLN ops raise: a call that falls back to them fails the test."""
    def boom(*a, **k):
        raise AssertionError("fell back to the reference implementation")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "adaln_modulate_ref", boom)
        mp.setattr(ops, "gated_residual_adaln_ref", boom)
        yield


REF_AM, REF_GR = ops.adaln_modulate_ref, ops.gated_residual_adaln_ref


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mod_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("frames,tpf,D", [(3, 16, 72), (2, 5, 123), (1, 4, 1152)])
def test_mixed_dtype_adaln_is_fused(backend, mod_dtype, frames, tpf, D):
    res, y, gate, shift, scale = _inputs(frames, tpf, D, mod_dtype)
    with warnings.catch_warnings(), no_reference():
        warnings.simplefilter("error")  # no fallback warning either
        h = ops.adaln_modulate(res, shift, scale, tokens_per_frame=tpf, backend=backend)
        out, h2 = ops.gated_residual_adaln(res, y, gate, shift, scale, tokens_per_frame=tpf, backend=backend)
    assert h.dtype == out.dtype == h2.dtype == torch.float32
    d = lambda t: t.double()  # noqa: E731
    want = REF_AM(d(res), d(shift), d(scale), tokens_per_frame=tpf)
    eager = REF_AM(res, shift, scale, tokens_per_frame=tpf)
    assert (h.double() - want).abs().max().item() <= _tol(want, eager)
    want_out, want_h = REF_GR(d(res), d(y), d(gate), d(shift), d(scale), tokens_per_frame=tpf)
    e_out, e_h = REF_GR(res, y, gate, shift, scale, tokens_per_frame=tpf)
    assert (out.double() - want_out).abs().max().item() <= _tol(want_out, e_out)
    assert (h2.double() - want_h).abs().max().item() <= _tol(want_h, e_h)


@pytest.mark.parametrize("backend", FUSED)
def test_mixed_dtype_gradients_match_reference(backend):
    res, y, gate, shift, scale = _inputs(2, 8, 72, torch.bfloat16, seed=1)
    g = torch.Generator().manual_seed(7)
    w1, w2 = torch.randn(res.shape, generator=g), torch.randn(res.shape, generator=g)

    def grads(fn_am, fn_gr, **kw):
        leaves = [t.clone().requires_grad_(True) for t in (res, y, gate, shift, scale)]
        r, yy, gt, sh, sc = leaves
        h = fn_am(r, sh, sc, tokens_per_frame=8, **kw)
        out, h2 = fn_gr(r, yy, gt, sh, sc, tokens_per_frame=8, **kw)
        ((h.float() * w1).sum() + (out.float() * w2).sum() + (h2.float() * w1).sum()).backward()
        return [t.grad for t in leaves]

    with no_reference():
        got = grads(ops.adaln_modulate, ops.gated_residual_adaln, backend=backend)
    want = grads(REF_AM, REF_GR)
    for name, a, b in zip(("residual", "y", "gate", "shift", "scale"), got, want):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)


def test_unfusable_mix_falls_back_with_one_warning():
    """bf16 rows with fp32 modulation is not a fused combination: reference, one warning."""
    x = torch.randn(8, 16).bfloat16()
    s = torch.randn(2, 16)
    assert not ops.adaln_fusable_dtypes(torch.bfloat16, torch.float32)
    assert ops.adaln_fusable_dtypes(torch.float32, torch.bfloat16) and ops.adaln_fusable_dtypes(torch.bfloat16, torch.bfloat16)
    got = ops.adaln_modulate(x, s, s, tokens_per_frame=4)
    torch.testing.assert_close(got, REF_AM(x, s, s, tokens_per_frame=4))


@pytest.mark.skipif(not ops.HAS_EXTENSION, reason="needs the compiled extension")
def test_world_model_under_autocast_uses_fused_adaln():
    """World-model training runs under bf16 autocast: every AdaLN call must take the fused kernels."""
    from wmpo.models.world_model import WorldModel, WorldModelConfig

    cfg = WorldModelConfig(latent_channels=4, latent_size=8, patch=2, hidden=32, spatial_blocks=1, temporal_blocks=1,
                           heads=2, num_context=2, chunk_len=2, action_dim=3)
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    x = torch.randn(2, 4, 4, 8, 8)
    t = torch.rand(2, 4)
    a = torch.randn(2, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16), no_reference():
        v = wm(x, t, a)
        v.float().pow(2).mean().backward()
    assert torch.isfinite(v.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in wm.parameters() if p.requires_grad)
