"""wmpo.ops.flow_step_patchify (the few-step sampler's Euler update fused with the next step's
patchified input): every backend on this machine vs a float64 reference, the custom op under
torch.compile(fullgraph=True), and input validation."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import wmpo.ops as ops
from wmpo.ops.flow_step_patchify import patchify_ref, unpatchify_ref

BACKENDS = ["ref"] + (["cpp"] if ops.HAS_EXTENSION else []) + (["triton"] if importlib.util.find_spec("triton") else [])
BF16_ULP = 2.0**-7


def _inputs(shape, patch, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, C, H, W = shape
    x = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(B * T * (H // patch) * (W // patch), C * patch * patch, generator=g).to(dtype)
    return x, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,patch", [((2, 3, 4, 8, 8), 2), ((1, 1, 3, 6, 9), 3), ((3, 2, 4, 4, 4), 1), ((2, 8, 4, 16, 16), 4)])
@pytest.mark.parametrize("times", ["tensor", "float", "0d"])
def test_flow_step_patchify_matches_reference(backend, dtype, shape, patch, times):
    x, v = _inputs(shape, patch, dtype)
    B = shape[0]
    if times == "tensor":
        t_now, t_next = torch.rand(B) * 0.5 + 0.5, torch.rand(B) * 0.5
    elif times == "float":
        t_now, t_next = 1.0, 0.25
    else:
        t_now, t_next = torch.tensor(0.5), torch.tensor(0.0)
    f64 = lambda t: t.double() if isinstance(t, torch.Tensor) else t  # noqa: E731
    x64 = x.double()
    p64 = ops.flow_step_patchify_ref(x64, v.double(), f64(t_now), f64(t_next), patch=patch)
    got_x = x.clone()
    got_p = ops.flow_step_patchify(got_x, v, t_now, t_next, patch=patch, backend=backend)
    assert got_p.shape == v.shape and got_p.dtype == dtype and got_p.is_contiguous()
    tol = 1e-6 if dtype == torch.float32 else BF16_ULP * max(1.0, x64.abs().max().item())
    assert (got_x.double() - x64).abs().max().item() <= tol
    assert (got_p.double() - p64).abs().max().item() <= tol
    # the returned patches are exactly the updated state, patchified (the next step's input)
    assert torch.equal(got_p, patchify_ref(got_x, patch))


def test_patchify_round_trip_matches_the_model_layout():
    """unpatchify(patchify(x)) == x, and the layout is the one WorldModel._embed / _unembed use."""
    from wmpo.models.world_model import WorldModel, WorldModelConfig

    m = WorldModel(WorldModelConfig(latent_size=8, patch=2, hidden=16, spatial_blocks=1, temporal_blocks=1, heads=2,
                                    num_context=1, chunk_len=2, freq_dim=8))
    x = torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(unpatchify_ref(patchify_ref(x, 2), x.shape, 2), x)
    y = torch.randn(2 * 3 * 16, 16)
    assert torch.equal(m._unembed(y, 2, 3), unpatchify_ref(y, (2, 3, 4, 8, 8), 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_step_patchify_under_torch_compile(backend):
    x, v = _inputs((2, 2, 4, 4, 4), 2, torch.float32, seed=3)

    def fn(x, v, tn, tx):
        return ops.flow_step_patchify(x, v, tn, tx, patch=2, backend=backend) * 2

    tn, tx = torch.tensor(0.75), torch.tensor(0.5)
    want_x = x.clone()
    want = fn(want_x, v, tn, tx)
    got_x = x.clone()
    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(got_x, v, tn, tx)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_x, want_x)


def test_flow_step_patchify_rejects_bad_inputs():
    x, v = _inputs((2, 2, 4, 4, 4), 2, torch.float32)
    with pytest.raises(ValueError, match="patch"):
        ops.flow_step_patchify(x, v, 1.0, 0.5, patch=3)
    with pytest.raises(ValueError, match="v"):
        ops.flow_step_patchify(x, v[:-1], 1.0, 0.5, patch=2)
    with pytest.raises(ValueError, match="x"):
        ops.flow_step_patchify(x[0], v, 1.0, 0.5, patch=2)
    with pytest.raises(ValueError, match="t_next"):
        ops.flow_step_patchify(x, v, 1.0, torch.zeros(5), patch=2)
    with pytest.raises(RuntimeError, match="in place"):
        ops.flow_step_patchify(x.clone().requires_grad_(), v, 1.0, 0.5, patch=2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_flow_step_patchify_on_gpu(backend, dtype):
    """The Triton and CUDA kernels on a GPU (paper shapes: 64 x 8 frames, 4 x 32 x 32 latents, patch 2)
    against the reference; run by bench/gpu_check.sh (pytest -m gpu)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend == "cuda" and not ops.extension_has_cuda():
        pytest.skip("wmpo._C was built without its CUDA kernels")
    x, v = _inputs((64, 8, 4, 32, 32), 2, dtype, seed=5)
    x, v = x.cuda(), v.cuda()
    t_now, t_next = torch.rand(64, device="cuda") * 0.5 + 0.5, torch.rand(64, device="cuda") * 0.5
    want_x = x.clone()
    want = ops.flow_step_patchify_ref(want_x, v, t_now, t_next, patch=2)
    got_x = x.clone()
    got = ops.flow_step_patchify(got_x, v, t_now, t_next, patch=2, backend=backend)
    tol = 1e-6 if dtype == torch.float32 else BF16_ULP * 8
    assert (got_x.float() - want_x.float()).abs().max().item() <= tol
    assert (got.float() - want.float()).abs().max().item() <= tol
