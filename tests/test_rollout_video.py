"""rollout_fixed(record_video=True): every frame of the engine's own rollout (the videos stage uses it)."""
from __future__ import annotations

import torch
from test_rollout_engine import K, TinyPolicy, TinyTokenizer, TinyWorldModelEnv, make_engine, make_pool

from wmpo.rollout.engine import ImaginationEngine, RolloutConfig


def _check_video(batch, video, pool):
    B, S = batch.chunk_mask.shape
    assert video.dtype == torch.uint8 and video.shape[0] == B
    assert (video.shape[1] - 1) % K == 0 and video.shape[1] <= 1 + S * K  # first frame + K per chunk run
    assert torch.equal(video[:, 0], pool)
    for n in range(B):
        for s in range(int(batch.chunk_mask[n].sum())):
            # the frame the policy read before chunk s is frame s*K of the video
            assert torch.equal(video[n, s * K], batch.obs[n, s])


def test_video_frames_agree_with_recorded_observations():
    pool = make_pool(3)
    eng = make_engine(num_slots=3)
    plain, _ = eng.rollout_fixed(pool, "x", max_steps=10, temperature=1.6, seed=4)
    batch, stats = eng.rollout_fixed(pool, "x", max_steps=10, temperature=1.6, seed=4, record_video=True)
    for f in ("obs", "tokens", "old_logp", "chunk_mask", "success", "length"):
        assert torch.equal(getattr(plain, f), getattr(batch, f)), f  # recording changes nothing else
    _check_video(batch, stats["video"], pool)


def test_video_without_detector_runs_to_the_horizon():
    pool = make_pool(2)
    eng = ImaginationEngine(TinyWorldModelEnv(), TinyPolicy(), None, TinyTokenizer(), RolloutConfig(num_slots=2, max_steps=6))
    batch, stats = eng.rollout_fixed(pool, "x", temperature=0.0, seed=0, early_exit=False, record_video=True)
    assert stats["video"].shape[1] == 1 + 3 * K and bool(batch.chunk_mask.all())
    _check_video(batch, stats["video"], pool)
    assert stats["video"][:, -1].float().std() > 0  # the last generated frames were written
