"""WorldModelVecEnv (issue 14, part 3): the world model as a gymnasium-style vector env driven by a
random policy, with reward and termination from a real (tiny, untrained) reward model whose
threshold is set to force "always success" or "never success"."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wmpo.models.reward import IncrementalSuccess, RewardConfig, RewardModel
from wmpo.models.vae import FrameVAE, VAEConfig
from wmpo.models.world_model import WorldModel, WorldModelConfig
from wmpo.rollout import WorldModelEnv, WorldModelVecEnv

B, K, A = 3, 2, 7


def _env(threshold: float, max_chunks=3, action_space="normalized", stats=None):
    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(16, 32), layers_per_block=1, norm_groups=8,
                             mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2,
                                     num_context=2, chunk_len=K, action_dim=A)).eval()
    wm.action_stats = stats
    reward = RewardModel(RewardConfig(image_size=32, patch_size=8, tubelet_size=2, hidden_size=32, num_layers=1,
                                      num_heads=2, clip_len=4)).eval()
    reward.threshold.fill_(threshold)
    pool = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    wm_env = WorldModelEnv(vae, wm, steps=2, device="cpu")
    return WorldModelVecEnv(wm_env, IncrementalSuccess(reward, B, "cpu"), pool, num_envs=B, max_chunks=max_chunks,
                            action_space=action_space)


def _random_actions(rng):
    return rng.uniform(-1, 1, (B, K, A)).astype(np.float32)


def test_random_policy_runs_to_truncation_without_success():
    env = _env(threshold=2.0)  # probabilities never exceed 2: never a success
    obs, info = env.reset(seed=1)
    assert obs.shape == (B, 3, 32, 32) and info["initial_index"].shape == (B,)
    rng = np.random.default_rng(0)
    for i in range(3):
        obs, reward, terminated, truncated, info = env.step(_random_actions(rng))
        assert obs.shape == (B, 3, 32, 32) and torch.isfinite(obs).all()
        assert info["frames"].shape == (B, K, 3, 32, 32) and info["success_prob"].shape == (B, K)
        assert torch.equal(reward, torch.zeros(B)) and not terminated.any()
        assert truncated.all() == (i == 2)
    assert torch.equal(obs, info["frames"][:, -1])


def test_success_terminates_with_one_reward_and_partial_reset():
    env = _env(threshold=-1.0)  # every window is a success: the first chunk succeeds
    env.reset(seed=2)
    rng = np.random.default_rng(1)
    _, reward, terminated, truncated, info = env.step(_random_actions(rng))
    assert torch.equal(reward, torch.ones(B)) and terminated.all() and not truncated.any()
    assert (info["first_success_frame"] >= 0).all()
    _, reward, terminated, _, _ = env.step(_random_actions(rng))  # done rows: no second reward
    assert torch.equal(reward, torch.zeros(B)) and terminated.all()
    mask = torch.tensor([True, False, True])
    _, info = env.reset(options={"mask": mask})
    assert torch.equal(info["reset"], mask)
    assert torch.equal(env.terminated, ~mask) and torch.equal(env.chunks, torch.tensor([0, 2, 0]))
    _, reward, terminated, _, _ = env.step(_random_actions(rng))
    assert torch.equal(reward, mask.float()) and terminated.all()


def test_reset_seed_is_reproducible():
    outs = []
    for _ in range(2):
        env = _env(threshold=2.0)
        env.reset(seed=7)
        outs.append(env.step(np.zeros((B, K, A), np.float32))[0])
    torch.testing.assert_close(outs[0], outs[1])


def test_env_space_actions_are_normalized_with_the_world_models_stats():
    q01, q99 = np.full(A, -2.0, np.float32), np.full(A, 6.0, np.float32)
    q99[-1] = q01[-1]  # a constant dimension maps to 0
    env = _env(threshold=2.0, action_space="env", stats={"q01": q01, "q99": q99})
    env.reset(seed=0)
    raw = torch.tensor([-2.0, 2.0, 6.0, 10.0, -5.0, 0.0, 3.0]).expand(B, K, A)
    want = torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0, -0.5, 0.0]).expand(B, K, A)
    torch.testing.assert_close(env._normalized(raw), want)
    with pytest.raises(ValueError, match="^action_space"):
        _env(threshold=2.0, action_space="env")  # no statistics


def test_bad_inputs_name_the_argument():
    env = _env(threshold=2.0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((B, K, A), np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="^actions"):
        env.step(np.zeros((B, K + 1, A), np.float32))
    with pytest.raises(ValueError, match=r"^actions: normalized actions must lie in \[-1, 1\]"):
        env.step(np.full((B, K, A), 3.0, np.float32))
    with pytest.raises(ValueError, match="^action_space"):
        _env(threshold=2.0, action_space="raw")


def test_load_world_model_env_from_a_run_folder(tmp_path):
    """A run folder as `wmpo run` leaves it (checkpoints, stage markers, config, cached initial frames)."""
    import json

    from wmpo.models.reward import save_reward
    from wmpo.pipeline.world_model_env import load_world_model_env

    src = _env(threshold=2.0)
    run = tmp_path / "run"
    for d in ("vae", "wm", "reward", "stages", "data"):
        (run / d).mkdir(parents=True)
    torch.save(src.wm_env.vae.state(), run / "vae" / "vae.pt")
    torch.save(src.wm_env.wm.state(), run / "wm" / "world_model.pt")
    save_reward(run / "reward" / "reward.pt", src.detector.model)
    markers = {"vae": {"path": "vae/vae.pt"}, "wm_finetune": {"path": "wm/world_model.pt"},
               "reward": {"reward_path": "reward/reward.pt"}}
    for stage, outputs in markers.items():
        key = next(iter(outputs))
        (run / "stages" / f"{stage}.json").write_text(json.dumps({"outputs": outputs, "run_relative": [[key]]}))
    (run / "config.json").write_text(json.dumps({"sampler_steps": 2, "imagined_horizon": 5,
                                                 "world_model": {"num_context": 2, "t_context": 0.05}}))
    frames = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(run / "data" / "initial_train_4.npz", states=np.zeros((4, 1)), frames=frames)

    env = load_world_model_env(run, num_envs=B)
    assert env.max_chunks == 3 and env.num_envs == B  # ceil(5 / K=2)
    obs, info = env.reset(seed=0)
    torch.testing.assert_close(obs, torch.as_tensor(frames)[info["initial_index"]].permute(0, 3, 1, 2).float() / 127.5 - 1)
    rng = np.random.default_rng(4)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(3):
        _, _, term, trunc, _ = env.step(_random_actions(rng))
        done = term | trunc
    assert done.all()
    (run / "stages" / "reward.json").unlink()
    with pytest.raises(ValueError, match="^run_dir: .* no finished stage 'reward'"):
        load_world_model_env(run, num_envs=B)


def test_diffusers_autoencoder_kl_drives_the_world_model_env():
    """A user's diffusers AutoencoderKL (with its own scaling/shift factors) as the env's VAE."""
    from diffusers import AutoencoderKL

    from wmpo.models.vae import FrameVAE

    torch.manual_seed(5)
    ae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                       latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.5,
                       shift_factor=0.1).eval()
    vae = FrameVAE.from_autoencoder_kl(ae)
    assert vae.ae is ae and vae.latent_size == 16
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(x), (ae.encode(x).latent_dist.mean - 0.1) * 0.5)
        torch.testing.assert_close(vae.decode(vae.encode(x)), ae.decode(ae.encode(x).latent_dist.mean).sample)
    wm = WorldModel(WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2,
                                     num_context=2, chunk_len=K, action_dim=A)).eval()
    env = WorldModelEnv(vae, wm, steps=2, device="cpu")
    env.reset(x)
    assert env.step(torch.zeros(2, K, A)).shape == (2, K, 3, 32, 32)
    with pytest.raises(ValueError, match="^ae"):
        FrameVAE.from_autoencoder_kl(torch.nn.Linear(2, 2))
