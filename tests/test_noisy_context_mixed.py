"""noisy_context with mixed dtypes (fp32 latents with bf16 / fp16 noise under autocast, or the reverse) is
fused on the C++ and Triton paths: each input read in its own dtype, fp32 math, x_t rounded once to x0's
dtype; against a float64 reference within the 2x rule, with no fallback to the reference and no warning.
Pairs outside fp32 / bf16 / fp16 still run the reference (warned)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import pytest
import torch

import wmpo.ops as ops
nc = importlib.import_module("wmpo.ops.noisy_context")  # the module (wmpo.ops.noisy_context the name is the function)

FUSED = (["cpp"] if ops.HAS_EXTENSION else []) + (
    ["triton"] if importlib.util.find_spec("triton") and os.environ.get("TRITON_INTERPRET") == "1" else [])
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
PAIRS = [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float32, torch.float16),
         (torch.float16, torch.bfloat16)]


def _inputs(shape, x_dtype, n_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.randn(shape, generator=g) * 2 + 0.3).to(x_dtype)
    noise = torch.randn(shape, generator=g).to(n_dtype)
    t = torch.rand(shape[0], generator=g)
    return x0, noise, t


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("x_dtype,n_dtype", PAIRS, ids=str)
@pytest.mark.parametrize("shape,num_context", [((3, 12, 4, 5, 7), 4), ((2, 3, 9), 0), ((1, 5, 4, 2, 2), 5)])
def test_mixed_dtypes_are_fused(monkeypatch, backend, x_dtype, n_dtype, shape, num_context):
    x0, noise, t = _inputs(shape, x_dtype, n_dtype)
    xt64, tf64 = nc.noisy_context_ref(x0.double(), noise.double(), t.double(), num_context=num_context, t_context=0.05)
    eager, _ = nc.noisy_context_ref(x0, noise, t, num_context=num_context, t_context=0.05)

    def boom(*a, **k):
        raise AssertionError("fell back to the reference implementation")

    monkeypatch.setattr(nc, "noisy_context_ref", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xt, tf = ops.noisy_context(x0, noise, t, num_context=num_context, t_context=0.05, backend=backend)
    assert xt.dtype == x_dtype and tf.dtype == torch.float32
    err = (xt.double() - xt64).abs().max().item()
    eager_err = (eager.double() - xt64).abs().max().item()
    # the ops' rule (tests/test_ops.py): 2x the eager reference's error, at least one ulp of x_t's dtype at the
    # output scale for bf16 / fp16 results (the rounding mode of the final cast may differ by one ulp)
    scale = xt64.abs().max().item()
    floor = 4 * ULP[torch.float32] * scale if x_dtype == torch.float32 else ULP[x_dtype] * scale
    assert err <= max(2 * eager_err, floor), (err, eager_err)
    torch.testing.assert_close(tf.double(), tf64.double(), atol=1e-7, rtol=0)


@pytest.mark.skipif(not ops.HAS_EXTENSION, reason="needs the C++ extension")
def test_other_pairs_still_run_the_reference_with_a_warning(monkeypatch):
    from wmpo.utils import logging as wlog

    monkeypatch.setattr(wlog, "_warned", set())
    monkeypatch.delenv("WMPO_STRICT", raising=False)
    x0, noise, t = _inputs((2, 4, 3), torch.float64, torch.float32)
    want, _ = nc.noisy_context_ref(x0, noise, t, num_context=1, t_context=0.05)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        xt, _ = ops.noisy_context(x0, noise, t, num_context=1, t_context=0.05)
    assert torch.equal(xt, want)
    assert any("mixed dtypes" in str(m.message) for m in w)
