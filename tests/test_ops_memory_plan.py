"""The rollout's memory plan (issue 18, item 2) and the K/V-only, preallocated context cache (items 2
and 12): the planner's arithmetic at the paper preset, bounded VAE decode batches, the plan printed
and applied at the start of a rollout, and the cache holding exactly K and V."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wmpo.accel.memory_plan import plan_for_env, plan_rollout_memory, vae_decode_bytes_per_frame_estimate

PAPER = dict(hidden=1152, temporal_blocks=28, blocks=56, tokens_per_frame=256, num_context=4, chunk_len=8,
             mlp_ratio=4.0, frame_size=256, horizon_chunks=64)
PARAMS = {"world_model": 680_000_000, "vae": 84_000_000, "policy": 110_000_000, "reward": 22_000_000}


def test_kv_cache_is_k_and_v_of_context_plus_chunk():
    p = plan_rollout_memory(slots=128, param_counts=PARAMS, dtype="bf16", **PAPER)
    # 2 (K, V) x 28 temporal blocks x 128 slots x 256 tokens x (4 + 8) frames x 1152 x 2 bytes
    assert p.kv_cache == 2 * 28 * 128 * 256 * 12 * 1152 * 2 == 50_734_301_184
    # what the old cache held: the whole qkv buffer (3 parts) of the 4 context frames in fp32
    old = 3 * 28 * 128 * 256 * 4 * 1152 * 4
    assert abs(old / 1e9 - 50.7) < 0.1
    p64 = plan_rollout_memory(slots=64, param_counts=PARAMS, dtype="bf16", **PAPER)
    assert p64.kv_cache * 2 == p.kv_cache
    assert p64.weights == {k: 2 * v for k, v in PARAMS.items()}  # bf16 weights for inference
    assert plan_rollout_memory(slots=64, param_counts=PARAMS, dtype="fp32", **PAPER).kv_cache == 2 * p64.kv_cache


def test_denoiser_step_activations():
    p = plan_rollout_memory(slots=16, param_counts=PARAMS, dtype="bf16", **PAPER)
    R = 16 * 8 * 256
    per_block = R * (7 * 1152 + 2 * 4608) * 2  # x, LN(x), qkv (3), attention out, projection; MLP hidden + GELU
    modulation = 16 * 12 * (56 * 6 * 1152 + 2 * 1152) * 2
    assert p.denoiser_step == per_block + modulation


def test_vae_decode_is_bounded_to_the_budget():
    """The paper preset's 128 slots x 8 frames decoded at once need ~137 GB of fp32 activations: the plan
    decodes in batches that fit what the weights and slot state leave of an 80 GB budget."""
    per_frame = vae_decode_bytes_per_frame_estimate(256, 128, 4)
    assert per_frame == 4 * 128 * 256 * 256 * 4
    p = plan_rollout_memory(slots=128, param_counts=PARAMS, dtype="fp32", budget_bytes=80 * 10**9, **PAPER)
    assert p.frames_per_chunk == 1024 and 1024 * per_frame > 80e9
    assert 1 <= p.vae_decode_batch < 1024
    assert p.peak_decode <= p.budget < p.peak_decode + per_frame  # the largest batch that fits
    assert any("batches of" in n for n in p.notes)
    # a measured bytes/frame replaces the estimate
    q = plan_rollout_memory(slots=128, param_counts=PARAMS, dtype="fp32", vae_bytes_per_frame=10**6, **PAPER)
    assert q.vae_bytes_per_frame == 10**6 and q.vae_decode_batch == 1024


def test_paper_preset_fits_an_80gb_h100_in_bf16_at_64_slots():
    p = plan_rollout_memory(slots=64, param_counts=PARAMS, dtype="bf16", **PAPER)
    assert p.fits and p.peak <= 0.9 * 80e9
    assert "fits" in p.table() and "KV cache" in p.table()
    big = plan_rollout_memory(slots=512, param_counts=PARAMS, dtype="fp32", **PAPER)
    assert not big.fits and "DOES NOT FIT" in big.table()


def test_bad_plan_inputs():
    with pytest.raises(ValueError, match="^slots"):
        plan_rollout_memory(slots=0, param_counts=PARAMS, **PAPER)
    with pytest.raises(ValueError, match="^dtype"):
        plan_rollout_memory(slots=4, param_counts=PARAMS, dtype="int8", **PAPER)


def _tiny():
    from wmpo.models.policy import PolicyConfig, VLAPolicy
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE, VAEConfig
    from wmpo.models.world_model import WorldModel, WorldModelConfig

    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=16, latent_channels=4, block_channels=(8, 8), layers_per_block=1, norm_groups=4,
                             mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_channels=4, latent_size=8, patch=2, hidden=32, spatial_blocks=1,
                                     temporal_blocks=2, heads=2, num_context=2, chunk_len=3, action_dim=3)).eval()
    with torch.no_grad():
        wm.final.weight.normal_(0, 0.5)
        wm.modulation.weight.normal_(0, 0.1)
    wm.set_action_stats({"q01": -np.ones(3), "q99": np.ones(3)})  # = the tokenizer's (the engine requires them)
    policy = VLAPolicy(PolicyConfig(chunk_len=3, action_dim=3, image_size=16, patch_size=8, hidden_size=32, num_heads=2,
                                    vision_layers=1, instr_layers=1, fusion_layers=1)).eval()
    return vae, wm, policy, ActionTokenizer(-np.ones(3), np.ones(3))


def test_plan_printed_and_applied_at_rollout_start(capsys):
    from wmpo.rollout.engine import ImaginationEngine, RolloutConfig
    from wmpo.rollout.world_model_env import WorldModelEnv

    vae, wm, policy, tok = _tiny()
    env = WorldModelEnv(vae, wm, steps=2)
    assert env.vae_max_batch is None
    eng = ImaginationEngine(env, policy, None, tok, RolloutConfig(num_slots=2, memory_plan=True))
    eng.rollout_fixed(torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8), "x", 6, 0.0, seed=0, early_exit=False)
    err = capsys.readouterr().err
    assert "memory plan" in err and "KV cache" in err
    plan = eng.last_memory_plan
    n_wm = sum(p.numel() for p in wm.parameters())
    # the models' actual weight bytes (fp32 here), whatever the inference dtype
    assert plan.weights["world_model"] == 4 * n_wm and plan.weights["policy"] == 4 * sum(p.numel() for p in policy.parameters())
    assert plan.frames_per_chunk == 2 * 3 and env.vae_max_batch == plan.vae_decode_batch >= 1
    with pytest.raises(ValueError, match="^inference_dtype"):
        RolloutConfig(inference_dtype="fp8")
    # the same numbers as planning the env directly
    assert plan_for_env(env, slots=2, horizon_chunks=2, extra_models={"policy": policy}).kv_cache == plan.kv_cache


def test_context_cache_holds_only_k_and_v_and_steps_write_in_place():
    _, wm, _, _ = _tiny()
    cfg = wm.cfg
    c, K, B = cfg.num_context, cfg.chunk_len, 2
    g = torch.Generator().manual_seed(3)
    ctx = torch.randn(B, c, 4, 8, 8, generator=g)
    acts = torch.randn(B, c + K, 3, generator=g)
    with torch.no_grad():
        cache = wm.build_context_cache(ctx, acts[:, :c])
        N, H, hd = cfg.tokens_per_frame, cfg.heads, cfg.hidden // cfg.heads
        assert len(cache["kv"]) == cfg.temporal_blocks
        for k, v in cache["kv"]:
            for buf in (k, v):
                assert buf.shape == (B * N, H, c + K, hd) and buf.is_contiguous()
                # its own storage: exactly K (or V), not the qkv projection it was sliced from
                assert buf.untyped_storage().nbytes() == buf.numel() * buf.element_size()
        # two denoising steps with different inputs, each equal to the uncached model
        for step in range(2):
            x = torch.randn(B, K, 4, 8, 8, generator=g)
            t = torch.full((B, K), 0.9 - 0.4 * step)
            cached = wm.forward_cached(x, t, acts[:, c:], cache)
            full = wm(torch.cat([ctx, x], 1), torch.cat([torch.full((B, c), cfg.t_context), t], 1), acts)
            torch.testing.assert_close(cached, full[:, c:], rtol=1e-4, atol=1e-5)
