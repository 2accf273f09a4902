import pytest
import torch

from wmpo.models.vae import FrameVAE, VAEConfig
from wmpo.models.world_model import WorldModel, WorldModelConfig
from wmpo.rollout import WorldModelEnv

torch.set_num_threads(1)


def make_models(seed=0):
    torch.manual_seed(seed)
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(16, 32), layers_per_block=1, norm_groups=8, mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2,
                                     num_context=2, chunk_len=3, action_dim=7)).eval()
    with torch.no_grad():
        for p in wm.parameters():
            p.normal_(0, 0.05)
    return vae, wm


def frames(B, seed=0):
    return torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_autoregressive_rollout_is_finite_and_shaped():
    vae, wm = make_models()
    env = WorldModelEnv(vae, wm, steps=4, device="cpu", generator=torch.Generator().manual_seed(0))
    env.reset(frames(2))
    acts = torch.rand(2, 3, 7) * 2 - 1
    for _ in range(3):
        out = env.step(acts)
        assert out.shape == (2, 3, 3, 32, 32) and torch.isfinite(out).all()
        assert out.min() >= -1 and out.max() <= 1
    lat = env.step(acts, decode=False)
    assert lat.shape == (2, 3, 4, 16, 16)
    # the context is the last c generated latents
    torch.testing.assert_close(env.ctx, lat[:, -2:])
    torch.testing.assert_close(env.ctx_actions, acts[:, -2:])
    assert env.step(acts, last_only=True).shape == (2, 1, 3, 32, 32)
    with pytest.raises(ValueError, match="actions"):
        env.step(torch.zeros(2, 4, 7))


@pytest.mark.parametrize("steps", [3, [1.0, 0.6, 0.1, 0.0]])
def test_cached_and_uncached_env_agree(steps):
    vae, wm = make_models()
    out = []
    for use_cache in (True, False):
        env = WorldModelEnv(vae, wm, steps=steps, device="cpu", use_cache=use_cache, generator=torch.Generator().manual_seed(3))
        env.reset(frames(2))
        a = torch.rand(2, 3, 7, generator=torch.Generator().manual_seed(1)) * 2 - 1
        out.append(torch.cat([env.step(a, decode=False) for _ in range(2)], 1))
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-5)


def test_reset_slots_replaces_only_masked_rows():
    vae, wm = make_models()
    env = WorldModelEnv(vae, wm, steps=2, device="cpu")
    env.reset(frames(3, 0))
    env.step(torch.rand(3, 3, 7))
    before, before_a = env.ctx.clone(), env.ctx_actions.clone()
    new = frames(3, 5)
    env.reset_slots(torch.tensor([False, True, False]), new)
    torch.testing.assert_close(env.ctx[[0, 2]], before[[0, 2]])
    torch.testing.assert_close(env.ctx_actions[[0, 2]], before_a[[0, 2]])
    z = vae.encode(new[1:2]).detach()
    torch.testing.assert_close(env.ctx[1], z.expand(2, *z.shape[1:]))
    assert env.ctx_actions[1].abs().sum() == 0


def test_t_context_in_thousandths():
    vae, wm = make_models()
    assert WorldModelEnv(vae, wm, steps=2, t_context=50, device="cpu").t_context == pytest.approx(0.05)
    assert WorldModelEnv(vae, wm, steps=2, device="cpu").t_context == pytest.approx(wm.cfg.t_context)


def test_reset_slots_with_rows_encodes_only_those_frames_and_matches_the_masked_path():
    vae, wm = make_models()
    a = WorldModelEnv(vae, wm, steps=2, device="cpu", generator=torch.Generator().manual_seed(0))
    b = WorldModelEnv(vae, wm, steps=2, device="cpu", generator=torch.Generator().manual_seed(0))
    for env in (a, b):
        env.reset(frames(4))
        env.step(torch.rand(4, 3, 7, generator=torch.Generator().manual_seed(1)) * 2 - 1, decode=False)
    mask = torch.tensor([False, True, False, True])
    new = frames(4, seed=5)
    a.reset_slots(mask, new)
    encoded = []
    orig = vae.encode
    vae.encode = lambda x, **kw: (encoded.append(x.shape[0]), orig(x, **kw))[1]
    try:
        ctx_ptr = b.ctx.data_ptr()
        b.reset_slots(mask, new, rows=torch.tensor([1, 3]))
    finally:
        vae.encode = orig
    assert encoded == [2]  # only the two refilled slots went through the VAE
    assert b.ctx.data_ptr() == ctx_ptr  # written in place (a captured chunk keeps its buffers)
    torch.testing.assert_close(b.ctx, a.ctx)
    torch.testing.assert_close(b.ctx_actions, a.ctx_actions)
    b.reset_slots(torch.zeros(4, dtype=torch.bool), new, rows=torch.zeros(0, dtype=torch.int64))  # nothing to refill
    torch.testing.assert_close(b.ctx, a.ctx)
