"""The imagination engine with wmpo's own policy (VLAPolicy + ActionTokenizer) and reward model
(IncrementalSuccess) plugged into the tiny test world: recorded log-probs match the policy, and the
incremental detector agrees with the reward model's offline classification."""
from __future__ import annotations

import pytest
import torch
from test_rollout_engine import (
    D,
    K,
    TinyPolicy,
    TinySuccess,
    TinyTokenizer,
    TinyWorldModelEnv,
    _replay_frames,
    make_pool,
)

from wmpo.rollout.engine import ImaginationEngine, RolloutConfig
from wmpo.utils.frames import uint8_to_model


def test_with_builtin_vla_policy_logp_matches():
    pol_mod = pytest.importorskip("wmpo.models.policy")
    from wmpo.models.tokenizer import ActionTokenizer

    cfg = pol_mod.PolicyConfig(chunk_len=K, action_dim=D, image_size=16, patch_size=8, hidden_size=32,
                               num_heads=2, vision_layers=1, instr_layers=1, fusion_layers=1, max_instr_len=16)
    torch.manual_seed(0)
    policy = pol_mod.VLAPolicy(cfg).eval()
    eng = ImaginationEngine(TinyWorldModelEnv(), policy, TinySuccess(), ActionTokenizer(-torch.ones(D), torch.ones(D)),
                            RolloutConfig(num_slots=4, max_steps=6, group_size=2))
    pool = make_pool(3)
    batch, stats = eng.sample_groups(pool, "lift the cube", group_size=2, num_trajectories=4, seed=0,
                                     dynamic_sampling=False)
    assert len(batch) == 4 and batch.instr.shape == (4, 16)
    m = batch.chunk_mask
    instr = batch.instr[:, None].expand(-1, m.shape[1], -1)[m]
    with torch.no_grad():
        lp, _ = policy.log_prob(uint8_to_model(batch.obs[m]), instr, batch.tokens[m], temperature=1.6)
    torch.testing.assert_close(lp, batch.old_logp[m], rtol=1e-4, atol=1e-4)
    fixed, _ = eng.rollout_fixed(pool, "lift the cube", max_steps=6, temperature=0.0)
    assert fixed.tokens.shape[1:] == batch.tokens.shape[1:]


def test_with_reward_model_detector_matches_offline_classify():
    rw = pytest.importorskip("wmpo.models.reward")
    torch.manual_seed(0)
    model = rw.RewardModel(rw.RewardConfig(clip_len=4, image_size=8, patch_size=4, tubelet_size=2, hidden_size=16,
                                           num_layers=1, num_heads=2)).eval()
    with torch.no_grad():
        model.head.weight.mul_(200.0)  # spread the random probabilities
    pool = make_pool(4)
    B, steps = 4, 12
    probe = ImaginationEngine(TinyWorldModelEnv(), TinyPolicy(), rw.IncrementalSuccess(model, B), TinyTokenizer(),
                              RolloutConfig(num_slots=B))
    # pick the threshold so that some trajectories succeed and some do not
    full, _ = probe.rollout_fixed(pool, "x", max_steps=steps, temperature=1.6, seed=1, early_exit=False)
    frames = _replay_frames(full, pool)
    probs = model.score_windows(frames, pad=True)[:, 1:]
    model.threshold.fill_(float(probs.amax(1).median()))
    eng = ImaginationEngine(TinyWorldModelEnv(), TinyPolicy(), rw.IncrementalSuccess(model, B), TinyTokenizer(),
                            RolloutConfig(num_slots=B))
    out, _ = eng.rollout_fixed(pool, "x", max_steps=steps, temperature=1.6, seed=1)
    success, first, _ = model.classify(_replay_frames(out, pool))
    assert success.any() and not success.all()
    assert torch.equal(out.success, success)
    # a success ends the trajectory at the chunk holding its first success frame
    assert torch.equal(out.length[success], first[success] + 1)
    assert torch.equal(out.chunk_mask.sum(1)[success], first[success] // K + 1)
    assert torch.equal(out.length[~success], torch.full_like(out.length[~success], steps))


def test_frozen_models_stored_in_bf16_roll_out_like_fp32():
    """RolloutConfig.bf16_weights (applied on CUDA): the world model, VAE and reward model cast to bf16
    in place still roll out (inputs cast by each model), at half the weight bytes, close to fp32."""
    from test_world_model_env import make_models

    from wmpo.models.reward import IncrementalSuccess, RewardConfig, RewardModel
    from wmpo.rollout import WorldModelEnv

    vae, wm = make_models()
    wm.set_action_stats({"q01": [-1.0] * 7, "q99": [1.0] * 7})
    torch.manual_seed(0)
    rm = RewardModel(RewardConfig(clip_len=4, image_size=8, patch_size=4, tubelet_size=2, hidden_size=16, num_layers=1,
                                  num_heads=2)).eval()

    class Pol(TinyPolicy):  # the world model of make_models takes 7-dim actions in chunks of 3
        chunk_len, action_dim = 3, 7

        def __init__(self):
            super().__init__()
            self.net[-1] = torch.nn.Linear(32, 3 * 7 * 16)

        def action_logits(self, frames, instr):
            x = torch.nn.functional.adaptive_avg_pool2d(frames.float(), 4).flatten(1)
            return self.net(torch.cat([x, self.emb(instr).mean(1)], 1)).view(-1, 3, 7, 16)

    from wmpo.models.tokenizer import ActionTokenizer

    torch.manual_seed(1)
    pol = Pol().eval()
    pool = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))

    def run(eng):
        out, _ = eng.rollout_fixed(pool, "x", max_steps=6, temperature=0.0, seed=0, early_exit=False)
        return out

    def engine():
        env = WorldModelEnv(vae, wm, steps=2, device="cpu", generator=torch.Generator().manual_seed(0))
        return ImaginationEngine(env, pol, IncrementalSuccess(rm, 2), ActionTokenizer(-torch.ones(7), torch.ones(7), num_bins=16),
                                 RolloutConfig(num_slots=2, max_steps=6, group_size=1))

    ref = run(engine())
    eng = engine()
    fp32_bytes = {n: sum(p.numel() * p.element_size() for p in m.parameters()) for n, m in eng.frozen_models().items()}
    assert set(fp32_bytes) == {"world_model", "vae", "reward"}
    after = eng.store_frozen_weights(torch.bfloat16)
    try:
        assert all(after[n] * 2 == fp32_bytes[n] for n in fp32_bytes)
        assert all(p.dtype == torch.bfloat16 for m in eng.frozen_models().values() for p in m.parameters())
        assert all(p.dtype == torch.float32 for p in pol.parameters())  # the trained policy stays fp32
        got = run(eng)
        a, b = ref.obs.float(), got.obs.float()
        assert torch.isfinite(b).all() and a.shape == b.shape
        assert (a - b).abs().mean() < 8.0  # uint8 frames: bf16 weights move a pixel by a few levels on average
    finally:
        for m in (vae, wm, rm):
            m.float()
