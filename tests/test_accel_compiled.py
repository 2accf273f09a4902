"""compile_module and CUDAGraphRunner: CPU fallbacks here, capture/replay on a GPU."""
from __future__ import annotations

import warnings

import pytest
import torch

from wmpo.accel.compiled import CUDAGraphRunner, compile_module
from wmpo.utils.logging import _warned


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()


def test_compile_module_cpu_modes():
    m = _mlp()
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = m(x)
        assert compile_module(m, "eager") is m
        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = compile_module(m, "reduce-overhead")(x)  # CUDA graphs -> "default" on the CPU
        assert "compile-mode-cpu-reduce-overhead" in _warned  # the one-time fallback warning fired
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        compile_module(m, "fastest")


def test_graph_runner_cpu_fallback_is_eager():
    m = _mlp()
    x = torch.randn(5, 8)
    runner = CUDAGraphRunner(m, x)
    assert not runner.enabled and runner.graph is None
    with torch.no_grad():
        for _ in range(2):
            y = torch.randn(5, 8)
            torch.testing.assert_close(runner(y), m(y))
    # zero-argument in-place callable (the rollout chunk): each call runs it once
    state = torch.zeros(3)
    step = CUDAGraphRunner(lambda: state.add_(1.0))
    step()
    step()
    assert torch.equal(state, torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="fn"):
        CUDAGraphRunner(42)


@pytest.mark.gpu
def test_graph_runner_capture_replay_cuda():
    m = _mlp().cuda()
    x = torch.randn(6, 8, device="cuda")
    with torch.no_grad():
        runner = CUDAGraphRunner(m, x)
        assert runner.enabled and runner.graph is not None
        for _ in range(3):
            y = torch.randn(6, 8, device="cuda")
            torch.testing.assert_close(runner(y), m(y))
        out_a = runner(x, ).clone()
        torch.testing.assert_close(out_a, m(x))
        with pytest.raises(ValueError, match="inputs"):
            runner(torch.randn(7, 8, device="cuda"))
    # in-place zero-argument callable: capture runs nothing, every replay runs it once
    state = torch.zeros(4, device="cuda")
    step = CUDAGraphRunner(lambda: state.mul_(2.0).add_(1.0))
    assert torch.equal(state.cpu(), torch.zeros(4))
    step()
    step()
    torch.cuda.synchronize()
    assert torch.equal(state.cpu(), torch.full((4,), 3.0))


@pytest.mark.gpu
def test_compile_module_cuda_reduce_overhead():
    m = _mlp().cuda()
    x = torch.randn(6, 8, device="cuda")
    with torch.no_grad():
        want = m(x)
        f = compile_module(m, "reduce-overhead")
        for _ in range(3):
            got = f(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
