"""DenoiserWorldModel (issue 14, part 3): a user's own denoiser drives WorldModelEnv / WorldModelVecEnv.

The user denoisers here are wmpo's WorldModel seen through another class's calling convention, so the
adapter's frames must equal the ones WorldModelEnv makes with the WorldModel itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wmpo.models.denoiser_adapter import DenoiserWorldModel, is_world_model
from wmpo.models.reward import IncrementalSuccess, RewardConfig, RewardModel
from wmpo.models.vae import FrameVAE, VAEConfig
from wmpo.models.world_model import WorldModel, WorldModelConfig
from wmpo.rollout import WorldModelEnv, WorldModelVecEnv

B, K, A, C, H = 3, 2, 7, 4, 16


def _models():
    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(16, 32), layers_per_block=1, norm_groups=8,
                             mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_size=H, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2,
                                     num_context=2, chunk_len=K, action_dim=A)).eval()
    with torch.no_grad():  # non-zero output layers: the zero init would give v = 0 for every input
        wm.final.weight.normal_(0, 0.02)
        wm.modulation.weight.normal_(0, 0.02)
    return vae, wm


class UserDenoiser(nn.Module):
    """A user's class: forward(x, t, actions) with its own names, wrapping wmpo's model."""

    def __init__(self, inner: WorldModel):
        super().__init__()
        self.inner = inner

    def forward(self, latents, timesteps, acts):
        return self.inner(latents, timesteps, acts)


class OpenSoraStyle(nn.Module):
    """[B, C, T, h, w] latents, time in [0, 1000], velocity x0 - noise."""

    def __init__(self, inner: WorldModel):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, y):
        return -self.inner(x.transpose(1, 2), t / 1000, y).transpose(1, 2)


def _frames(vae, wm_like, *, use_cache=True, chunks=2, seed=3):
    env = WorldModelEnv(vae, wm_like, steps=3, device="cpu", use_cache=use_cache, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(1)
    env.reset(torch.rand(B, 3, 32, 32, generator=g) * 2 - 1)
    return [env.step(torch.rand(B, K, A, generator=g) * 2 - 1) for _ in range(chunks)]


def _spec(**kw):
    return dict(num_context=2, chunk_len=K, action_dim=A, latent_channels=C, latent_size=H, **kw)


def test_a_user_denoiser_gives_the_frames_of_the_model_it_wraps():
    vae, wm = _models()
    want = _frames(vae, wm, use_cache=False)
    adapted = DenoiserWorldModel(UserDenoiser(wm), **_spec())
    assert is_world_model(adapted) and not adapted.cfg.step_conditioned
    for got_cached, got_full, w in zip(_frames(vae, adapted), _frames(vae, adapted, use_cache=False), want):
        torch.testing.assert_close(got_cached, w, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_full, w, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want[0], want[1])  # the chunks differ: the comparison is not of constants


def test_open_sora_layout_time_scale_and_velocity_sign():
    vae, wm = _models()
    want = _frames(vae, wm, use_cache=False)
    adapted = DenoiserWorldModel(OpenSoraStyle(wm), layout="BCTHW", time_scale=1000.0, velocity_sign=-1, **_spec())
    for got, w in zip(_frames(vae, adapted), want):
        torch.testing.assert_close(got, w, atol=1e-5, rtol=1e-5)
    # without the conversions the frames differ: the options do something
    wrong = DenoiserWorldModel(lambda x, t, y: OpenSoraStyle(wm)(x.transpose(1, 2), t, y).transpose(1, 2), **_spec())
    assert not torch.allclose(_frames(vae, wrong)[0], want[0], atol=1e-3)


def test_the_vector_env_runs_a_user_denoiser_with_env_unit_actions():
    vae, wm = _models()
    stats = {"q01": -2 * np.ones(A, dtype=np.float32), "q99": 2 * np.ones(A, dtype=np.float32)}
    adapted = DenoiserWorldModel(UserDenoiser(wm), action_stats=stats, **_spec())
    reward = RewardModel(RewardConfig(image_size=32, patch_size=8, tubelet_size=2, hidden_size=32, num_layers=1,
                                      num_heads=2, clip_len=4)).eval()
    reward.threshold.fill_(2.0)  # never a success: every row truncates
    pool = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    env = WorldModelVecEnv(WorldModelEnv(vae, adapted, steps=2, device="cpu"), IncrementalSuccess(reward, B, "cpu"), pool,
                           num_envs=B, max_chunks=2, action_space="env")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (B, 3, 32, 32)
    for _ in range(2):
        obs, rew, term, trunc, info = env.step(np.full((B, K, A), 3.0, dtype=np.float32))  # clipped to [-1, 1]
    assert info["frames"].shape == (B, K, 3, 32, 32) and trunc.all() and not term.any() and float(rew.sum()) == 0


def test_bad_denoisers_are_named_with_expected_and_received():
    vae, wm = _models()
    with pytest.raises(ValueError, match=r"^denoiser: expected denoiser\(x_t, t, actions\)"):
        DenoiserWorldModel(lambda x, t: x, **_spec())
    with pytest.raises(ValueError, match=r"^denoiser: expected a velocity shaped like x_t \(1, 4, 4, 16, 16\).*got \(1, 4, 4, 16\)"):
        DenoiserWorldModel(lambda x, t, a: x[..., 0], **_spec())
    with pytest.raises(ValueError, match=r"^denoiser: the probe call denoiser\(x_t \(1, 4, 4, 16, 16\).*raised ValueError: actions: expected shape"):
        DenoiserWorldModel(UserDenoiser(wm), **{**_spec(), "latent_size": 16, "action_dim": 5})
    with pytest.raises(ValueError, match="^denoiser: expected a velocity tensor"):
        DenoiserWorldModel(lambda x, t, a: (x, t), **_spec())
    with pytest.raises(ValueError, match="^num_context: expected a positive int"):
        DenoiserWorldModel(UserDenoiser(wm), **{**_spec(), "num_context": 0})
    with pytest.raises(ValueError, match="^layout"):
        DenoiserWorldModel(UserDenoiser(wm), layout="BHWCT", **_spec())
    with pytest.raises(ValueError, match=r"^action_stats: expected q01/q99 of shape \(7,\)"):
        DenoiserWorldModel(UserDenoiser(wm), action_stats={"q01": np.zeros(3), "q99": np.ones(3)}, **_spec())
    adapted = DenoiserWorldModel(UserDenoiser(wm), **_spec())
    with pytest.raises(ValueError, match=r"^x_t: expected \[B, 2, 4, 16, 16\]"):
        adapted.forward_cached(torch.zeros(1, 3, C, H, H), torch.zeros(1, 3), torch.zeros(1, 3, A),
                               adapted.build_context_cache(torch.zeros(1, 2, C, H, H), torch.zeros(1, 2, A), 0.05))


def test_a_step_conditioned_denoiser_receives_the_step_sizes():
    seen = []

    def student(x, t, a, step_size):
        seen.append(step_size.clone())
        return torch.zeros_like(x)

    adapted = DenoiserWorldModel(student, step_conditioned=True, **_spec())
    vae, _ = _models()
    env = WorldModelEnv(vae, adapted, steps=2, device="cpu")
    env.reset(torch.zeros(1, 3, 32, 32))
    seen.clear()
    env.step(torch.zeros(1, K, A))
    assert len(seen) == 2
    for d in seen:  # context frames take no step; the K frames the sampler's step size (1/2 each)
        torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, 0.5, 0.5]]))
