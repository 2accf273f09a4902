"""wmpo.pipeline.diagnostics.action_sensitivity: does a world model use its actions?"""
import numpy as np
import pytest
import torch

from wmpo.data.clips import synthetic_episodes
from wmpo.data.loader import action_stats
from wmpo.models.vae import FrameVAE, VAEConfig
from wmpo.models.world_model import WorldModel, WorldModelConfig
from wmpo.pipeline.diagnostics import action_sensitivity

torch.set_num_threads(1)


def _setup():
    eps = synthetic_episodes(3, 14, size=32, seed=0)
    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(16, 32), layers_per_block=1, norm_groups=8, mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2, num_context=2,
                                     chunk_len=3)).eval()
    with torch.no_grad():  # off the zero-initialized output layer, so the prediction depends on the input
        for p in wm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return eps, vae, wm


def test_a_model_that_ignores_its_actions_has_gap_one_and_one_that_reads_them_does_not():
    eps, vae, wm = _setup()
    stats = action_stats(eps)
    r = action_sensitivity(vae, wm, eps, stats, device=torch.device("cpu"), windows=8, times=(0.5,))
    assert r["windows"] == 8 and 0.0 < r["moving_fraction"] < 1.0
    gap = r["t0.5"]["action_gap"]
    assert gap is not None and abs(gap - 1.0) > 1e-4  # random action MLP: another window's actions change the error
    assert r["t0.5"]["moving_permuted"] == pytest.approx(gap * r["t0.5"]["moving"])
    with torch.no_grad():  # the action embedding made constant: the actions can no longer matter
        wm.a_mlp[-1].weight.zero_()
    r0 = action_sensitivity(vae, wm, eps, stats, device=torch.device("cpu"), windows=8, times=(0.5,))
    assert r0["t0.5"]["action_gap"] == 1.0
    # same windows and noise for the same seed: the measure is repeatable
    assert action_sensitivity(vae, wm, eps, stats, device=torch.device("cpu"), windows=8, times=(0.5,)) == r0


def test_no_moving_pixel_gives_none():
    eps, vae, wm = _setup()
    for e in eps:  # a scene where nothing moves
        e.frames = np.repeat(e.frames[:1], len(e.frames), axis=0)
    r = action_sensitivity(vae, wm, eps, action_stats(eps), device=torch.device("cpu"), windows=4, times=(0.7,))
    assert r["moving_fraction"] == 0.0 and r["t0.7"]["moving"] is None and r["t0.7"]["action_gap"] is None
    assert r["t0.7"]["static"] is not None
