"""wmpo.ops under hostile input (issue 12, ops faults): masked / infinite logits, out-of-range or
non-finite scalars, in-place updates of tensors that require grad, an empty head dim."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import wmpo.ops as ops
from wmpo.ops.frame_causal_attention import frame_causal_attention

BACKENDS = ["ref"] + (["cpp"] if ops.HAS_EXTENSION else []) + (["triton"] if importlib.util.find_spec("triton") else [])


def _masked_logits(seed=0, rows=6):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(rows, 256, generator=g)
    logits[:, 100:] = float("-inf")  # the upper bins masked out in every row
    logits[1, :50] = float("-inf")  # row 1: only bins 50..99 live
    tokens = torch.randint(0, 100, (rows,), generator=g)
    tokens[1] = 60
    return logits, tokens


def _entropy64(logits, temperature):
    """float64 entropy over the live (finite) bins only."""
    out = []
    for row in logits.double() / temperature:
        z = row[torch.isfinite(row)]
        p = torch.softmax(z, -1)
        out.append(float(-(p * torch.log(p)).sum()))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 1.6])
def test_masked_logits_give_finite_entropy(backend, temperature):
    logits, tokens = _masked_logits()
    lp, ent = ops.action_logprob(logits, tokens, temperature=temperature, backend=backend)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all(), (lp, ent)
    torch.testing.assert_close(ent.double(), _entropy64(logits, temperature), rtol=1e-5, atol=1e-5)
    live = logits[torch.arange(len(tokens)), tokens] / temperature
    lse = torch.logsumexp(logits.double() / temperature, -1)
    torch.testing.assert_close(lp.double(), live.double() - lse, rtol=1e-5, atol=1e-5)
    # a token on a masked bin has log-probability -inf, still with a finite entropy
    tok2 = tokens.clone()
    tok2[0] = 200
    lp2, ent2 = ops.action_logprob(logits, tok2, temperature=temperature, backend=backend)
    assert lp2[0] == float("-inf") and torch.isfinite(ent2).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_logits_give_finite_gradients(backend):
    """The fused backward (custom op) and autograd through the reference agree, with no NaN, and the
    masked bins get exactly zero gradient."""
    logits, tokens = _masked_logits(seed=1)
    g = torch.Generator().manual_seed(2)
    w_lp, w_ent = torch.randn(len(tokens), generator=g), torch.randn(len(tokens), generator=g)

    def grad_of(fn):
        x = logits.clone().requires_grad_(True)
        lp, ent = fn(x)
        ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
        return x.grad

    got = grad_of(lambda x: ops.action_logprob(x, tokens, temperature=1.3, backend=backend))
    assert torch.isfinite(got).all()
    assert (got[torch.isinf(logits)] == 0).all()
    # float64 autograd over the live bins only (what the masked distribution is)
    want = torch.zeros_like(logits, dtype=torch.float64)
    for r in range(len(tokens)):
        live = torch.isfinite(logits[r])
        z = (logits[r, live].double() / 1.3).requires_grad_(True)
        lsm = torch.log_softmax(z, -1)
        idx = int(live[: tokens[r]].sum())
        loss = lsm[idx] * w_lp[r].double() - (lsm.exp() * lsm).sum() * w_ent[r].double()
        (gz,) = torch.autograd.grad(loss, z)
        want[r, live] = gz / 1.3
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", ["+inf", "nan", "all-masked"])
def test_nonfinite_rows_agree_between_backends(bad):
    """A row whose log-sum-exp is not finite gives NaN logp and entropy in every backend; the other rows
    are unaffected."""
    logits, tokens = _masked_logits(seed=3)
    if bad == "+inf":
        logits[2, 7] = float("inf")
    elif bad == "nan":
        logits[2, 7] = float("nan")
    else:
        logits[2, :] = float("-inf")
    results = {be: ops.action_logprob(logits, tokens, temperature=1.0, backend=be) for be in BACKENDS}
    for be, (lp, ent) in results.items():
        assert torch.isnan(lp[2]) and torch.isnan(ent[2]), (be, lp[2], ent[2])
        keep = torch.arange(len(tokens)) != 2
        assert torch.isfinite(lp[keep]).all() and torch.isfinite(ent[keep]).all(), be
        ref_lp, ref_ent = results["ref"]
        torch.testing.assert_close(lp[keep], ref_lp[keep], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent[keep], ref_ent[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eps", [float("nan"), -1e-6, float("inf")])
def test_bad_eps_rejected(eps):
    x, s = torch.randn(4, 8), torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"^eps\b"):
        ops.adaln_modulate(x, s, s, tokens_per_frame=2, eps=eps)
    with pytest.raises(ValueError, match=r"^eps\b"):
        ops.gated_residual_adaln(x, x, s, s, s, tokens_per_frame=2, eps=eps)


@pytest.mark.parametrize("t_context", [-0.01, 1.5, float("nan"), float("inf")])
def test_t_context_outside_unit_interval_rejected(t_context):
    lat = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"^t_context\b.*\[0, 1\]"):
        ops.noisy_context(lat, lat, torch.rand(2), num_context=1, t_context=t_context)


@pytest.mark.parametrize("which", ["t_now", "t_next"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "tensor-nan"])
def test_nonfinite_flow_times_rejected(which, value):
    x, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    if value == "tensor-nan":
        value = torch.tensor([0.5, float("nan")])
    times = {"t_now": 0.9, "t_next": 0.5, which: value}
    before = x.clone()
    with pytest.raises(ValueError, match=rf"^{which}\b.*finite"):
        ops.flow_step(x, v, times["t_now"], times["t_next"], num_context=1)
    assert torch.equal(x, before)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), 0.0, -1.0])
def test_bad_temperature_rejected(temperature):
    with pytest.raises(ValueError, match=r"^temperature\b"):
        ops.action_logprob(torch.randn(3, 256), torch.zeros(3, dtype=torch.long), temperature=temperature)


def test_flow_step_refuses_a_leaf_that_requires_grad():
    """As PyTorch does for in-place ops on such a leaf; under no_grad it is allowed (as in PyTorch)."""
    x = torch.randn(2, 3, 4, requires_grad=True)
    v = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        x.add_(1.0)  # PyTorch's own rule, which flow_step follows
    with pytest.raises(RuntimeError, match=r"flow_step: x is a leaf Variable that requires grad"):
        ops.flow_step(x, v, 1.0, 0.5, num_context=1)
    y = x * 1.0  # a non-leaf in the graph: updating it in place would silently drop its gradient
    with pytest.raises(RuntimeError, match=r"flow_step: x is a tensor that requires grad"):
        ops.flow_step(y, v, 1.0, 0.5, num_context=1)
    with torch.no_grad():
        ops.flow_step(x, v, 1.0, 0.5, num_context=1)


def test_head_dim_zero_rejected():
    q = torch.randn(2, 1, 3, 0)
    with pytest.raises(ValueError, match=r"^q\b.*head dim"):
        frame_causal_attention(q, q, q)


def test_valid_edge_values_still_accepted():
    """The boundaries stay legal: eps 0, t_context 0 and 1."""
    x, s = torch.randn(4, 8), torch.randn(2, 8)
    assert torch.isfinite(ops.adaln_modulate(x, s, s, tokens_per_frame=2, eps=0.0)).all()
    lat = torch.randn(2, 3, 4)
    for tc in (0.0, 1.0):
        xt, tf = ops.noisy_context(lat, lat * 0, torch.rand(2), num_context=1, t_context=tc)
        assert math.isclose(float(tf[0, 0]), tc)
