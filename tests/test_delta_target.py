"""WorldModelConfig.delta_target: the model generates each predicted frame's difference from the last
context frame; training, distillation and the diagnostics take that as the flow target, and the rollout env
adds the last context frame back after sampling (on the cached, uncached and fused few-step paths)."""
import dataclasses

import pytest
import torch

from wmpo import ops
from wmpo.models.vae import FrameVAE, VAEConfig
from wmpo.models.world_model import WorldModel, WorldModelConfig, generation_window
from wmpo.rollout import WorldModelEnv
from wmpo.train.world_model import flow_loss

torch.set_num_threads(1)


def models(delta: bool):
    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(16, 32), layers_per_block=1, norm_groups=8, mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2,
                                     num_context=2, chunk_len=3, action_dim=7, delta_target=delta)).eval()
    with torch.no_grad():
        for p in wm.parameters():
            p.normal_(0, 0.05)
    return vae, wm


def test_generation_window():
    cfg = WorldModelConfig(num_context=2, chunk_len=3)
    x = torch.randn(2, 5, 4, 8, 8)
    assert generation_window(cfg, x) is x  # the paper's target: the frames themselves
    g = generation_window(dataclasses.replace(cfg, delta_target=True), x)
    torch.testing.assert_close(g[:, :2], x[:, :2])  # context frames stay frames
    torch.testing.assert_close(g[:, 2:], x[:, 2:] - x[:, 1:2])
    # a scene that does not change is the zero target
    still = x[:, 1:2].expand(2, 5, 4, 8, 8)
    assert generation_window(dataclasses.replace(cfg, delta_target=True), still)[:, 2:].abs().max() == 0


def test_flow_loss_targets_the_differences():
    _, wm = models(True)
    x0, noise = torch.randn(3, 5, 4, 16, 16), torch.randn(3, 5, 4, 16, 16)
    acts, t = torch.rand(3, 5, 7) * 2 - 1, torch.rand(3)
    xg = torch.cat([x0[:, :2], x0[:, 2:] - x0[:, 1:2]], 1)
    xt, tf = ops.noisy_context(xg, noise, t, num_context=2, t_context=wm.cfg.t_context)
    want = (wm(xt, tf, acts)[:, 2:] - (noise[:, 2:] - xg[:, 2:])).pow(2).mean()
    torch.testing.assert_close(flow_loss(wm, x0, acts, t, noise), want)


@pytest.mark.parametrize("path", ["cached", "uncached", "fused"])
def test_env_adds_the_last_context_frame_back(path):
    """The same weights and noise: a delta model's frames are the plain model's plus the last context latent."""
    vae, plain = models(False)
    _, delta = models(True)
    delta.load_state_dict(plain.state_dict())
    first = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    acts = torch.rand(2, 3, 7, generator=torch.Generator().manual_seed(2)) * 2 - 1
    kw = {"use_cache": path != "uncached", "fused_max_steps": 4 if path == "fused" else 0}
    outs = {}
    for name, wm in (("plain", plain), ("delta", delta)):
        env = WorldModelEnv(vae, wm, steps=3, device="cpu", generator=torch.Generator().manual_seed(0), **kw)
        env.reset(first)
        ctx_last = env.ctx[:, -1:].clone()
        lat = env.step(acts, decode=False)
        outs[name] = (lat, ctx_last)
        torch.testing.assert_close(env.ctx, lat[:, -2:])  # the next context: the frames as generated, absolute
    (p, _), (d, last) = outs["plain"], outs["delta"]
    assert last.abs().max() > 0.1  # the shift is not trivially zero
    torch.testing.assert_close(d, p + last)
