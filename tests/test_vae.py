import pytest
import torch

from wmpo.data.clips import FrameDataset, synthetic_episodes
from wmpo.models.vae import FrameVAE, VAEConfig, psnr
from wmpo.train.vae import VAETrainConfig, train_vae

torch.set_num_threads(1)


def tiny_vae_cfg(**kw):
    d = dict(frame_size=32, latent_channels=4, block_channels=(16, 32), layers_per_block=1, norm_groups=8, mid_attention=False)
    d.update(kw)
    return VAEConfig(**d)


def test_shapes_any_leading_dims():
    vae = FrameVAE(tiny_vae_cfg()).eval()
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 3, 4, 16, 16)
        y = vae.decode(z, max_batch=4)
    assert y.shape == x.shape
    with pytest.raises(ValueError, match="frames"):
        vae.encode(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(torch.zeros(2, 3, 16, 16))


def test_paper_architecture_is_sdxl_shaped():
    cfg = VAEConfig()
    assert cfg.downsample == 8 and cfg.latent_size == 32 and cfg.latent_channels == 4


def test_scaling_gives_unit_std_and_roundtrips():
    vae = FrameVAE(tiny_vae_cfg()).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        raw = vae.decode(vae.encode(x))
        vae.estimate_scaling(x)
        z = vae.encode(x)
        scaled = vae.decode(z)
    assert abs(z.std().item() - 1) < 1e-3 and abs(z.mean().item()) < 1e-3
    torch.testing.assert_close(scaled, raw, rtol=1e-4, atol=1e-4)  # scaling is invisible end to end


def test_training_raises_psnr_and_resumes(tmp_path):
    eps = synthetic_episodes(4, 10, size=32, seed=0)
    cfg = VAETrainConfig(vae=tiny_vae_cfg(), steps=40, batch_size=8, lr=2e-3, log_every=10, ckpt_every=20)
    data = FrameDataset(eps, 32)
    x = data.frames[:16]
    before = psnr(FrameVAE(tiny_vae_cfg()).eval().decode_raw(FrameVAE(tiny_vae_cfg()).eval().posterior(x).mean).detach(), x).mean()
    r = train_vae(cfg, None, tmp_path, episodes=eps, device="cpu")
    assert r["step"] == 40 and (tmp_path / "vae.pt").is_file() and (tmp_path / "config.json").is_file()
    assert r["psnr"] > before.item() + 3, (r, before)
    vae = FrameVAE.from_checkpoint(tmp_path / "vae.pt")
    assert float(vae.scaling_factor) == pytest.approx(r["scaling_factor"])
    cfg.steps = 45  # resume continues from step 40
    r2 = train_vae(cfg, None, tmp_path, episodes=eps, device="cpu")
    assert r2["step"] == 45
