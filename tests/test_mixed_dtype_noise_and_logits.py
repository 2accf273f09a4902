"""Mixed dtypes in the elementwise ops. noisy_context with mixed dtypes (fp32 latents with bf16 / fp16 noise under autocast, or the reverse) is
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


@pytest.mark.parametrize("backend", FUSED)
def test_action_logprob_bf16_logits_with_fp32_gradients_stay_fused(monkeypatch, backend):
    """action_logprob has one floating input (logits); its outputs and their gradients are fp32, so bf16 logits
    (autocast) meet fp32 gradients in the backward: both directions run the kernels, no reference, no warning."""
    al = importlib.import_module("wmpo.ops.action_logprob")
    g = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(6, 7, 256, generator=g)).bfloat16().requires_grad_()
    tokens = torch.randint(0, 256, (6, 7), generator=g)
    ref64 = logits.detach().double().requires_grad_()
    lp64, en64 = al.action_logprob_ref(ref64, tokens, temperature=1.6)
    (lp64.sum() + 0.3 * en64.sum()).backward()

    def boom(*a, **k):
        raise AssertionError("fell back to the reference implementation")

    monkeypatch.setattr(al, "action_logprob_ref", boom)
    if backend == "cpp":  # the backward kernel is C++ / CUDA; Triton's backward is the reference math
        monkeypatch.setattr(al, "action_logprob_backward_ref", boom)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        lp, en = ops.action_logprob(logits, tokens, temperature=1.6, backend=backend)
        (lp.sum() + 0.3 * en.sum()).backward()
    assert not [str(m.message) for m in w if "wmpo" in str(m.message)]  # no fallback warning (numpy's may appear)
    assert lp.dtype == en.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp.double(), lp64.detach().double(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(en.double(), en64.detach().double(), atol=1e-4, rtol=1e-4)
    scale = ref64.grad.abs().max().item()
    assert (logits.grad.double() - ref64.grad).abs().max().item() <= ULP[torch.bfloat16] * scale
