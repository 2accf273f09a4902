"""ImaginationEngine: continuous batching, dynamic sampling, recording, determinism.

The engine is tested with small hand-written components that implement the same interfaces as
the real ones (a tiny VLA policy, a deterministic latent-free world-model env and a threshold
success detector), so every expected value can be recomputed by replaying recorded actions; the
`real_components` tests run the same checks with wmpo's own VAE / world model / policy / reward
model once those modules exist.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wmpo.rollout.engine import ImaginationEngine, RolloutConfig
from wmpo.utils.frames import uint8_to_model

# the benchmark-only eager reference loop lives in bench/ (not a package): load it by path
_spec = importlib.util.spec_from_file_location("bench_eager_rollout", Path(__file__).resolve().parents[1] / "bench" / "eager_rollout.py")
_eager = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_eager)
rollout_eager_reference = _eager.rollout_eager_reference

H = W = 8
K, D, BINS = 2, 3, 16


class TinyPolicy(nn.Module):
    """A real (if small) Policy: pooled frame + instruction embedding -> K*D*bins logits."""

    chunk_len = K
    action_dim = D
    num_bins = BINS

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(128, 16)
        self.net = nn.Sequential(nn.Linear(3 * 4 * 4 + 16, 32), nn.Tanh(), nn.Linear(32, K * D * BINS))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def encode_instructions(self, instructions, device=None):
        L = 6
        out = torch.zeros(len(instructions), L, dtype=torch.int64)
        for i, s in enumerate(instructions):
            codes = [ord(c) % 128 for c in s[:L]]
            out[i, : len(codes)] = torch.tensor(codes, dtype=torch.int64)
        return out.to(device) if device is not None else out

    def action_logits(self, frames, instr):
        x = nn.functional.adaptive_avg_pool2d(frames.float(), 4).flatten(1)
        h = torch.cat([x, self.emb(instr).mean(1)], 1)
        return self.net(h).view(-1, K, D, BINS)

    def sample(self, frames, instr, temperature):
        logits = self.action_logits(frames, instr)
        if not temperature:
            tok = logits.argmax(-1)
            return tok, torch.log_softmax(logits, -1).gather(-1, tok[..., None])[..., 0]
        lp = torch.log_softmax(logits / temperature, -1)
        tok = torch.multinomial(lp.exp().reshape(-1, BINS), 1).view(lp.shape[:-1])
        return tok, lp.gather(-1, tok[..., None])[..., 0]

    def log_prob(self, frames, instr, tokens, temperature=1.0):
        lp = torch.log_softmax(self.action_logits(frames, instr) / temperature, -1)
        ent = -(lp.exp() * lp).sum(-1)
        return lp.gather(-1, tokens[..., None])[..., 0], ent


def TinyTokenizer():
    """wmpo's own tokenizer over BINS bins (the engine only uses detokenize)."""
    from wmpo.models.tokenizer import ActionTokenizer

    return ActionTokenizer(-torch.ones(D), torch.ones(D), num_bins=BINS)


class TinyWorldModelEnv:
    """Channel 0 follows the actions (x <- 0.8 x + 0.5 mean(a)); channels 1, 2 stay as reset."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.frame = None

    def reset(self, first_frames):  # state kept in one static buffer (CUDA-graph friendly)
        if self.frame is None or self.frame.shape != first_frames.shape:
            self.frame = first_frames.clone()
        else:
            self.frame.copy_(first_frames)

    def reset_slots(self, mask, first_frames):
        self.frame.copy_(torch.where(mask.view(-1, 1, 1, 1), first_frames, self.frame))

    def step(self, actions, decode=True):
        out = []
        x = self.frame
        for k in range(actions.shape[1]):
            a = actions[:, k].mean(1).view(-1, 1, 1)
            x = x.clone()
            x[:, 0] = (0.8 * x[:, 0] + 0.5 * a).clamp(-1, 1)
            out.append(x)
        self.frame.copy_(x)
        return torch.stack(out, 1)

    def decode(self, latents):
        return latents


class TinySuccess:
    """Success if channel 1 is bright (always), never if channel 2 is dark, else mean(ch0) > thr."""

    def __init__(self, thr=0.3):
        self.thr = thr

    def reset_slots(self, mask, first_frames):
        pass

    def update(self, new_frames):
        ch = new_frames.mean((-1, -2))  # [B, K, 3]
        hit = (ch[..., 0] > self.thr) | (ch[..., 1] > 0.5)
        hit &= ch[..., 2] > -0.5
        first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], -1, dtype=torch.long))
        return hit.any(1), first.long()


def make_pool(n=3):
    """uint8 pool: state 0 always succeeds, state 1 never, others depend on the policy."""
    g = torch.Generator().manual_seed(1)
    f = torch.rand(n, 3, H, W, generator=g) * 0.4 - 0.2
    f[0, 1] = 0.9
    f[1, 2] = -0.9
    u8 = ((f.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return u8


def make_engine(num_slots=6, thr=0.3, device="cpu", **cfg_kw):
    cfg = RolloutConfig(num_slots=num_slots, max_steps=10, temperature=1.6, group_size=4, **cfg_kw)
    return ImaginationEngine(TinyWorldModelEnv(device), TinyPolicy().to(device), TinySuccess(thr), TinyTokenizer(), cfg)


def replay(engine, batch, init_u8, temperature):
    """Re-run each trajectory alone from its recorded tokens; -> per trajectory (frames read, success chunk)."""
    env, det = TinyWorldModelEnv(), TinySuccess(engine.detector.thr)
    out = []
    for n in range(len(batch)):
        f = uint8_to_model(init_u8[n : n + 1])
        env.reset(f)
        steps = int(batch.chunk_mask[n].sum())
        reads, first_success = [batch.obs[n, 0]], None
        for s in range(steps):
            acts = TinyTokenizer().detokenize(batch.tokens[n : n + 1, s])
            frames = env.step(acts)
            ok, first = det.update(frames)
            u8 = ((frames[0, -1].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
            reads.append(u8)
            if bool(ok) and first_success is None:
                first_success = (s, int(first))
        out.append((reads, first_success))
    return out


@pytest.fixture(scope="module")
def sampled():
    torch.manual_seed(0)
    eng = make_engine()
    pool = make_pool(3)
    batch, stats = eng.sample_groups(pool, ["stack the cubes"] * 3, group_size=4, num_trajectories=8, seed=3)
    return eng, pool, batch, stats


def test_exactly_b_from_complete_mixed_groups(sampled):
    eng, pool, batch, stats = sampled
    assert len(batch) == 8
    assert batch.obs.shape == (8, 5, H, W, 3) and batch.tokens.shape == (8, 5, K, D)
    assert sorted(batch.group.tolist()) == [0] * 4 + [1] * 4
    init = stats["init_index"]
    for g in range(2):
        rows = batch.group == g
        assert int(rows.sum()) == 4
        assert len(set(init[rows].tolist())) == 1  # one initial state per group
        s = batch.success[rows]
        assert s.any() and not s.all()  # dynamic sampling kept only mixed groups
    # states 0 (always succeeds) and 1 (never) can only give uniform groups: never kept
    assert not set(init.tolist()) & {0, 1}
    assert stats["groups_dropped"] >= 1
    assert stats["groups_kept"] == 2 and not stats["hit_max_groups"]


def test_slots_stay_full(sampled):
    eng, pool, batch, stats = sampled
    # the stop condition is checked right after a chunk: until then every slot held a trajectory
    assert stats["slot_utilization"] == 1.0
    assert stats["host_syncs"] == stats["chunks"]
    assert stats["trajectories_finished"] >= 8
    assert stats["frames_computed"] == stats["frames_active"] == stats["chunks"] * 6 * K
    assert stats["frames_kept"] == int(batch.length.sum()) <= stats["frames_active"]


def test_recorded_logp_matches_policy(sampled):
    eng, pool, batch, stats = sampled
    m = batch.chunk_mask
    obs = uint8_to_model(batch.obs[m])
    instr = batch.instr[:, None].expand(-1, m.shape[1], -1)[m]
    with torch.no_grad():
        lp, _ = eng.policy.log_prob(obs, instr, batch.tokens[m], temperature=1.6)
    torch.testing.assert_close(lp, batch.old_logp[m], rtol=1e-5, atol=1e-5)
    # and not under another temperature
    with torch.no_grad():
        lp1, _ = eng.policy.log_prob(obs, instr, batch.tokens[m], temperature=1.0)
    assert (lp1 - batch.old_logp[m]).abs().max() > 1e-3


def test_stops_at_first_success_and_records_what_policy_read(sampled):
    eng, pool, batch, stats = sampled
    init_u8 = pool[stats["init_index"]]
    for n, (reads, first_success) in enumerate(replay(eng, batch, init_u8, 1.6)):
        steps = int(batch.chunk_mask[n].sum())
        for s in range(steps):
            assert torch.equal(batch.obs[n, s], reads[s]), (n, s)
        if batch.success[n]:
            assert first_success is not None and first_success[0] == steps - 1
            assert int(batch.length[n]) == (steps - 1) * K + first_success[1] + 1
        else:
            assert first_success is None
            assert steps == 5 and int(batch.length[n]) == 10


def test_deterministic_with_seed():
    pool = make_pool(4)
    a, sa = make_engine().sample_groups(pool, "x", group_size=4, num_trajectories=8, seed=11)
    b, sb = make_engine().sample_groups(pool, "x", group_size=4, num_trajectories=8, seed=11)
    for f in ("obs", "tokens", "old_logp", "chunk_mask", "success", "group", "length"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    c, _ = make_engine().sample_groups(pool, "x", group_size=4, num_trajectories=8, seed=12)
    assert not torch.equal(a.tokens, c.tokens)


def test_no_dynamic_sampling_keeps_uniform_groups():
    pool = make_pool(2)  # state 0 always succeeds, state 1 never: every group is uniform
    eng = make_engine(num_slots=4)
    batch, stats = eng.sample_groups(pool, "x", group_size=2, num_trajectories=4, seed=0, dynamic_sampling=False)
    assert len(batch) == 4 and stats["groups_dropped"] == 0
    init = stats["init_index"]
    assert torch.equal(batch.success, init == 0)
    # success at the first chunk for state 0 -> one chunk recorded
    assert torch.equal(batch.chunk_mask.sum(1)[init == 0], torch.ones(int((init == 0).sum()), dtype=torch.long))
    # with dynamic sampling nothing can be kept: stops at max_groups and says so
    eng2 = make_engine(num_slots=4)
    batch2, stats2 = eng2.sample_groups(pool, "x", group_size=2, num_trajectories=4, seed=0, max_groups=6)
    assert len(batch2) == 0 and stats2["hit_max_groups"] and stats2["groups_dropped"] == 6


def test_rollout_fixed_agrees_with_sample_groups(sampled):
    eng, pool, batch, stats = sampled
    fixed, fstats = eng.rollout_fixed(pool, "stack the cubes", max_steps=10, temperature=1.6, seed=0)
    assert len(fixed) == 3
    assert fixed.obs.shape[1:] == batch.obs.shape[1:]
    assert fixed.tokens.shape[1:] == batch.tokens.shape[1:] and fixed.old_logp.shape[1:] == batch.old_logp.shape[1:]
    assert fixed.obs.dtype == batch.obs.dtype and fixed.old_logp.dtype == batch.old_logp.dtype
    assert bool(fixed.success[0]) and not bool(fixed.success[1])
    assert int(fixed.chunk_mask[0].sum()) == 1 and int(fixed.chunk_mask[1].sum()) == 5
    # without early exit: same result (no host sync in the loop)
    fixed2, _ = eng.rollout_fixed(pool, "stack the cubes", max_steps=10, temperature=1.6, seed=0, early_exit=False)
    for f in ("obs", "tokens", "chunk_mask", "success", "length"):
        assert torch.equal(getattr(fixed, f), getattr(fixed2, f)), f
    # the replay check also holds for the fixed path
    for n, (reads, first_success) in enumerate(replay(eng, fixed, pool, 1.6)):
        steps = int(fixed.chunk_mask[n].sum())
        assert all(torch.equal(fixed.obs[n, s], reads[s]) for s in range(steps))
        assert (first_success is not None) == bool(fixed.success[n])


def test_eager_reference_matches_fixed_success():
    eng = make_engine()
    pool = make_pool(4)
    ref, rstats = rollout_eager_reference(eng, pool, "x", max_steps=10, temperature=1.6, seed=5)
    assert ref.obs.shape == (4, 5, H, W, 3) and rstats["chunks"] == 5
    assert bool(ref.success[0]) and not bool(ref.success[1])
    assert set(rstats["time"]) >= {"policy", "world_model", "vae", "reward", "host"}
    # its success verdicts are those of replaying its own (full-horizon) actions
    for n, (reads, first_success) in enumerate(replay(eng, ref, pool, 1.6)):
        assert (first_success is not None) == bool(ref.success[n])


def test_bad_inputs():
    eng = make_engine()
    with pytest.raises(ValueError, match="num_trajectories"):
        eng.sample_groups(make_pool(2), "x", group_size=4, num_trajectories=6)
    with pytest.raises(ValueError, match="initial_frames"):
        eng.rollout_fixed(torch.zeros(2, H, W), "x", max_steps=4)
    with pytest.raises(ValueError, match="instructions"):
        eng.rollout_fixed(make_pool(3), ["a", "b"], max_steps=4)


def test_bench_measure_point_runs_all_modes():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "rollout_loop.py"
    spec = importlib.util.spec_from_file_location("bench_rollout_loop", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def make(cfg, reference=False):
        return ImaginationEngine(TinyWorldModelEnv(), TinyPolicy(), TinySuccess(), TinyTokenizer(), cfg)

    res = bench.measure_point(make, make_pool(3), "x", batch=4, chunks=2, horizon_chunks=3, group_size=2,
                              modes=["eager_reference", "engine_eager"], temperature=1.6,
                              device=torch.device("cpu"), peak=None)
    assert set(res["modes"]) == {"eager_reference", "engine_eager"}
    assert res["frames_per_call"] == 4 * 2 * K and res["flops_per_chunk"] > 0
    assert all(v["frames_per_sec"] > 0 and v["mfu"] is None for v in res["modes"].values())
    assert res["grpo"]["trajectories"] == 4 and res["grpo"]["trajectories_per_hour"] > 0
    assert {"policy", "world_model", "reward"} <= set(res["engine_time_split_s"])
    assert "speedup_vs_reference" in res


def _assert_same(a, b, fields=("obs", "tokens", "old_logp", "chunk_mask", "success", "length")):
    for f in fields:
        torch.testing.assert_close(getattr(a, f).cpu(), getattr(b, f).cpu(), msg=f)


@pytest.mark.slow
def test_compiled_chunk_matches_eager_cpu():
    pool = make_pool(3)
    ref, _ = make_engine().rollout_fixed(pool, "x", max_steps=10, temperature=0.0)
    eng = make_engine(compile_chunk=True, compile_on_cpu=True)
    out, _ = eng.rollout_fixed(pool, "x", max_steps=10, temperature=0.0)
    _assert_same(ref, out)


@pytest.mark.gpu
@pytest.mark.parametrize("flags", [dict(cuda_graph=True), dict(compile_chunk=True), dict(cuda_graph=True, compile_chunk=True)])
def test_graph_and_compile_match_eager_cuda(flags):
    pool = make_pool(3).cuda()
    ref, _ = make_engine(device="cuda").rollout_fixed(pool, "x", max_steps=10, temperature=0.0, early_exit=False)
    eng = make_engine(device="cuda", **flags)
    for _ in range(2):  # second call replays the captured graph on reused slot state
        out, _ = eng.rollout_fixed(pool, "x", max_steps=10, temperature=0.0, early_exit=False)
        _assert_same(ref, out)
    b1, _ = eng.sample_groups(make_pool(3).cuda(), "x", group_size=4, num_trajectories=8, seed=3)
    b2, _ = make_engine(device="cuda").sample_groups(make_pool(3).cuda(), "x", group_size=4, num_trajectories=8, seed=3)
    assert len(b1) == len(b2) == 8


def test_unseeded_calls_differ_and_global_seed_reproduces():
    pool = make_pool(3)
    eng = make_engine()
    torch.manual_seed(7)
    a, _ = eng.rollout_fixed(pool, "x", max_steps=10)
    b, _ = eng.rollout_fixed(pool, "x", max_steps=10)
    assert not torch.equal(a.tokens, b.tokens)
    torch.manual_seed(7)
    c, _ = eng.rollout_fixed(pool, "x", max_steps=10)
    assert torch.equal(a.tokens, c.tokens)


def test_dropped_groups_are_freed_and_result_unchanged():
    pool = make_pool(3)
    eng = make_engine(num_slots=2)
    a, sa = eng.sample_groups(pool, "x", group_size=2, num_trajectories=6, seed=2)
    assert sa["groups_dropped"] * 2 > 2  # compaction ran (more dropped rows than slots)
    init = sa["init_index"]
    assert len(a) == 6 and not set(init.tolist()) & {0, 1}
    for g in range(3):
        s = a.success[a.group == g]
        assert s.any() and not s.all()
    # the kept records survived compaction intact: they replay exactly
    for n, (reads, first_success) in enumerate(replay(eng, a, pool[init], 1.6)):
        steps = int(a.chunk_mask[n].sum())
        assert all(torch.equal(a.obs[n, s], reads[s]) for s in range(steps))
        assert (first_success is not None) == bool(a.success[n])


def _replay_frames(batch, init_u8):
    """All frames (initial + generated) of each trajectory, from its recorded tokens -> [N, 1 + steps, 3, H, W]."""
    env = TinyWorldModelEnv()
    env.reset(uint8_to_model(init_u8))
    vids = [uint8_to_model(init_u8)[:, None]]
    for s in range(batch.tokens.shape[1]):
        vids.append(env.step(TinyTokenizer().detokenize(batch.tokens[:, s])))
    return torch.cat(vids, 1)[:, : 1 + int(batch.length.max())]


def _real_engine(num_slots, steps=2, seed=0):
    """wmpo's own VAE, world model, world-model env, VLA policy and reward detector at toy sizes."""
    pytest.importorskip("wmpo.rollout.world_model_env")
    from wmpo.models.policy import PolicyConfig, VLAPolicy
    from wmpo.models.reward import IncrementalSuccess, RewardConfig, RewardModel
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE, VAEConfig
    from wmpo.models.world_model import WorldModel, WorldModelConfig
    from wmpo.rollout.world_model_env import WorldModelEnv

    torch.manual_seed(seed)
    vae = FrameVAE(VAEConfig(frame_size=16, latent_channels=4, block_channels=(8, 16), layers_per_block=1,
                             norm_groups=4, mid_attention=False)).eval()
    wm = WorldModel(WorldModelConfig(latent_channels=4, latent_size=8, patch=2, hidden=32, spatial_blocks=1,
                                     temporal_blocks=1, heads=2, num_context=2, chunk_len=4, action_dim=3)).eval()
    wm.set_action_stats({"q01": -np.ones(3), "q99": np.ones(3)})
    pol = VLAPolicy(PolicyConfig(chunk_len=4, action_dim=3, image_size=16, patch_size=8, hidden_size=32, num_heads=2,
                                 vision_layers=1, instr_layers=1, fusion_layers=1, max_instr_len=16)).eval()
    rm = RewardModel(RewardConfig(clip_len=4, image_size=16, patch_size=8, tubelet_size=2, hidden_size=16,
                                  num_layers=1, num_heads=2)).eval()
    env = WorldModelEnv(vae, wm, steps=steps, num_context=2, device="cpu")
    tok = ActionTokenizer(-torch.ones(3), torch.ones(3))
    return ImaginationEngine(env, pol, IncrementalSuccess(rm, num_slots), tok,
                             RolloutConfig(num_slots=num_slots, max_steps=12, group_size=2))


def test_real_components_sample_groups():
    eng = _real_engine(num_slots=3)
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8, generator=g)
    batch, stats = eng.sample_groups(pool, "lift", group_size=2, num_trajectories=4, seed=0, dynamic_sampling=False)
    assert len(batch) == 4 and batch.obs.shape == (4, 3, 16, 16, 3) and batch.tokens.shape == (4, 3, 4, 3)
    assert stats["slot_utilization"] == 1.0 and stats["host_syncs"] == stats["chunks"]
    assert torch.equal(batch.obs[:, 0], pool[stats["init_index"]])  # the first obs is the initial frame
    m = batch.chunk_mask
    assert m[:, 0].all() and torch.equal(m.sum(1), (batch.length + 3) // 4)
    instr = batch.instr[:, None].expand(-1, m.shape[1], -1)[m]
    with torch.no_grad():
        lp, _ = eng.policy.log_prob(uint8_to_model(batch.obs[m]), instr, batch.tokens[m], temperature=1.6)
    torch.testing.assert_close(lp, batch.old_logp[m], rtol=1e-4, atol=1e-4)
    again, _ = eng.sample_groups(pool, "lift", group_size=2, num_trajectories=4, seed=0, dynamic_sampling=False)
    for f in ("obs", "tokens", "old_logp", "success", "length"):
        assert torch.equal(getattr(batch, f), getattr(again, f)), f
    fixed, fstats = eng.rollout_fixed(pool, "lift", max_steps=12, temperature=1.6, seed=0)
    assert fixed.obs.shape[1:] == batch.obs.shape[1:] and fixed.tokens.shape[1:] == batch.tokens.shape[1:]
    ref, rstats = rollout_eager_reference(eng, pool, "lift", max_steps=12, temperature=1.6, seed=0)
    assert ref.obs.shape == fixed.obs.shape and rstats["time"]["world_model"] > 0


def test_horizon_not_multiple_of_chunk():
    pool = make_pool(3)
    eng = make_engine()
    out, _ = eng.rollout_fixed(pool, "x", max_steps=5, temperature=1.6, seed=0)  # K=2: 3 chunks, 6 frames
    assert out.tokens.shape[1] == 3
    assert (out.length <= 5).all()
    assert int(out.length[1]) == 5 and int(out.chunk_mask[1].sum()) == 3  # never-succeeding state: to the horizon


def test_engine_feeds_the_world_model_actions_in_its_own_normalization():
    """Tokenizer and world model with different q01/q99: the env receives the policy's tokens decoded with
    the tokenizer's statistics and normalized with the world model's (wmpo.rollout.action_map)."""
    from wmpo.data.clips import normalize_actions

    class RecordingEnv(TinyWorldModelEnv):
        def __init__(self, stats):
            super().__init__()
            self.action_stats, self.K, self.A = stats, K, D
            self.seen = []

        def step(self, actions, decode=True):
            self.seen.append(actions.clone())
            return super().step(actions, decode)

    tok = TinyTokenizer()  # q01 = -1, q99 = 1
    wm_stats = {"q01": np.array([-2.0, 0.0, -1.0]), "q99": np.array([2.0, 1.0, 3.0])}
    env = RecordingEnv(wm_stats)
    eng = ImaginationEngine(env, TinyPolicy(), TinySuccess(), tok, RolloutConfig(num_slots=3, max_steps=6, group_size=1))
    batch, _ = eng.rollout_fixed(make_pool(3), "lift", max_steps=6, seed=0, early_exit=False)
    assert len(env.seen) == 3 and batch.chunk_mask.sum() >= 4
    for s, acts in enumerate(env.seen):
        live = batch.chunk_mask[:, s]  # finished trajectories keep zero-padded token rows
        want = normalize_actions(tok.decode(batch.tokens[live, s]), wm_stats)
        torch.testing.assert_close(acts[live], want, atol=1e-6, rtol=0)
    assert not torch.allclose(env.seen[0], tok.detokenize(batch.tokens[:, 0]))  # not the tokenizer's own
    # incompatible pairs are refused when the engine is built
    with pytest.raises(ValueError, match="no action statistics"):
        ImaginationEngine(RecordingEnv(None), TinyPolicy(), TinySuccess(), tok, RolloutConfig(num_slots=3))
    bad = RecordingEnv(wm_stats)
    bad.K = K + 1
    with pytest.raises(ValueError, match=f"chunk_len {K}"):
        ImaginationEngine(bad, TinyPolicy(), TinySuccess(), tok, RolloutConfig(num_slots=3))


def test_stats_count_successes_of_dropped_groups():
    # states 0 (always succeeds) and 1 (never): every group is uniform, so dynamic sampling drops both;
    # the imagined success count still covers them (WMPO's imagined success rate is over every trajectory)
    torch.manual_seed(0)
    eng = make_engine()
    pool = make_pool(2)
    batch, stats = eng.sample_groups(pool, ["stack the cubes"] * 2, group_size=4, num_trajectories=4, seed=3, max_groups=2)
    assert len(batch) == 0 and stats["groups_dropped"] == 2
    assert stats["trajectories_finished"] == 8 and stats["trajectories_succeeded"] == 4
