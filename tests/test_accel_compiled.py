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


def test_compile_failure_falls_back_to_eager_with_one_warning():
    """torch.compile fails lazily, at the first call: that call and every later one run eagerly."""
    from wmpo.accel.compiled import compile_with_fallback

    def fn(x):
        y = x * 2
        torch._dynamo.graph_break()  # fullgraph=True cannot compile this
        return y + 1

    torch._dynamo.reset()
    wrapped = compile_with_fallback(fn, name="test fn", backend="eager", fullgraph=True)
    x = torch.randn(4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = wrapped(x)
        b = wrapped(x)
    msgs = [str(m.message) for m in w if "torch.compile of test fn failed" in str(m.message)]
    assert len(msgs) == 1 and "running it eagerly" in msgs[0]
    assert wrapped.failed is not None
    torch.testing.assert_close(a, x * 2 + 1)
    torch.testing.assert_close(b, x * 2 + 1)
    # an error of the function itself (not of the compiler) still reaches the caller
    with pytest.raises(RuntimeError):
        wrapped(torch.randn(2, 3, 4, 5).expand(2, 3, 4, 5).view(-1, 7))


def test_rollout_compiles_the_denoiser_step_not_the_chunk():
    """compile_chunk wraps the env's world model in CompiledDenoiser (forward_cached compiled, here
    with dynamo's eager backend to stay quick) and the rollout matches the eager one."""
    import numpy as np

    from wmpo.accel.compiled import CompiledDenoiser
    from wmpo.models.policy import PolicyConfig, VLAPolicy
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE, VAEConfig
    from wmpo.models.world_model import WorldModel, WorldModelConfig
    from wmpo.rollout.engine import ImaginationEngine, RolloutConfig
    from wmpo.rollout.world_model_env import WorldModelEnv

    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=16, latent_channels=4, block_channels=(8, 8), layers_per_block=1, norm_groups=4,
                             mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_channels=4, latent_size=8, patch=2, hidden=32, spatial_blocks=1,
                                     temporal_blocks=1, heads=2, num_context=2, chunk_len=2, action_dim=3)).eval()
    wm.set_action_stats({"q01": -np.ones(3), "q99": np.ones(3)})  # = the tokenizer's (the engine requires them)
    policy = VLAPolicy(PolicyConfig(chunk_len=2, action_dim=3, image_size=16, patch_size=8, hidden_size=32, num_heads=2,
                                    vision_layers=1, instr_layers=1, fusion_layers=1)).eval()
    tok = ActionTokenizer(-np.ones(3), np.ones(3))
    frames = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)

    def run(compile_chunk):
        env = WorldModelEnv(vae, wm, steps=3, generator=torch.Generator().manual_seed(1))
        eng = ImaginationEngine(env, policy, None, tok, RolloutConfig(num_slots=2, compile_chunk=compile_chunk,
                                                                      compile_on_cpu=True))
        if compile_chunk:  # quick CPU check: dynamo tracing with its eager backend instead of inductor
            eng._denoiser_compiled = True
            env.wm = CompiledDenoiser(wm, backend="eager")
        batch, _ = eng.rollout_fixed(frames, "x", 4, 0.0, seed=0, early_exit=False)
        return batch, env

    torch._dynamo.reset()
    want, _ = run(False)
    got, env = run(True)
    assert isinstance(env.wm, CompiledDenoiser) and env.wm.compile_failures == {}
    # the compiled step ran (no fallback): at 3 steps the fused few-step path's denoiser step
    assert env.wm.forward_patches_cached._checked
    torch.testing.assert_close(got.obs, want.obs)
    torch.testing.assert_close(got.tokens, want.tokens)
