"""Reward model: clip sampling, threshold selection, batched windows, incremental == full, training separates."""
import json

import numpy as np
import pytest
import torch

from wmpo.data.episode import Episode
from wmpo.models.reward import IncrementalSuccess, RewardConfig, RewardModel, load_reward, prf1, select_threshold
from wmpo.train.reward import RewardTrainConfig, clip_pools, gather_clips, split_episodes, success_frame, train_reward_on_episodes
from wmpo.utils.frames import uint8_to_model

TINY = RewardConfig(image_size=32, patch_size=8, tubelet_size=2, hidden_size=64, num_layers=2, num_heads=4)


def blob_episode(rng, success: bool, T: int = 16, size: int = 32, task: str = "stack") -> Episode:
    """A red blob wanders; in a success a big green block appears in the last 3 frames. The episode ends at
    its success frame, as collect writes it: finish_step = T (also for failures)."""
    frames = np.full((T + 1, size, size, 3), 40, np.uint8)
    pos = rng.integers(2, size - 10, size=2)
    for t in range(T + 1):
        pos = np.clip(pos + rng.integers(-2, 3, size=2), 0, size - 8)
        frames[t, pos[1] : pos[1] + 6, pos[0] : pos[0] + 6] = (200, 30, 30)
        if success and t >= T - 2:
            frames[t, 18:30, 18:30] = (30, 220, 30)
    return Episode(
        frames=frames, actions=np.zeros((T, 7), np.float32), states=np.zeros((T + 1, 1)), rewards=np.zeros(T, np.float32),
        dones=np.zeros(T, bool), success=success, finish_step=T, instruction="x", task=task,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RewardModel(TINY).eval()


def test_clip_pools_follow_the_paper():
    rng = np.random.default_rng(0)
    eps = [blob_episode(rng, True, T=20), blob_episode(rng, False, T=10)]
    pos, neg = clip_pools(eps, 8)
    assert success_frame(eps[0]) == 20
    # finish_step is the index of the first solved frame (collect ends episodes there, so it is T); an
    # episode that went on after its success has its positive clip end at finish_step, not after it
    later = blob_episode(rng, True, T=20)
    later.finish_step = 14
    assert success_frame(later) == 14
    assert clip_pools([later], 8)[0].tolist() == [[0, 14]]
    assert pos.tolist() == [[0, 20]]
    assert sorted(e for i, e in neg if i == 0) == list(range(1, 13))  # entirely before the success frame
    assert sorted(e for i, e in neg if i == 1) == list(range(1, 11))  # any clip of a failure
    clips = gather_clips(eps, np.array([[0, 20], [1, 3]]), 8)
    assert clips.shape == (2, 8, 32, 32, 3) and clips.dtype == torch.uint8
    np.testing.assert_array_equal(clips[0].numpy(), eps[0].frames[13:21])
    np.testing.assert_array_equal(clips[1, :5].numpy(), np.repeat(eps[1].frames[:1], 5, 0))  # left-padded with frame 0
    np.testing.assert_array_equal(clips[1, 5:].numpy(), eps[1].frames[1:4])


def test_split_is_stratified_and_disjoint():
    rng = np.random.default_rng(0)
    eps = [blob_episode(rng, i % 2 == 0, task=("a" if i < 10 else "b")) for i in range(20)]
    tr, va, te = split_episodes(eps, 0.2, 0.2, 0)
    assert sorted(tr + va + te) == list(range(20))
    assert all(type(i) is int for i in tr + va + te)  # saved in config.json: plain ints, not numpy scalars
    for part in (va, te):
        assert {(eps[i].task, eps[i].success) for i in part} == {("a", True), ("a", False), ("b", True), ("b", False)}


def test_select_threshold():
    thr, f1 = select_threshold(np.array([0.1, 0.2, 0.35, 0.7, 0.9]), np.array([0, 0, 0, 1, 1]))
    assert f1 == 1.0 and 0.35 < thr < 0.7
    assert abs(thr - 0.525) < 1e-9  # midpoint of the separating gap
    # not separable: best F1 below 1, threshold still a valid cut
    s, y = np.array([0.1, 0.6, 0.4, 0.8]), np.array([0, 0, 1, 1])
    thr, f1 = select_threshold(s, y)
    assert f1 == pytest.approx(max(prf1(s > t, y)[2] for t in np.linspace(0, 1, 101)))
    assert prf1(np.array([1, 1, 0]), np.array([1, 0, 1])) == pytest.approx((0.5, 0.5, 0.5))


def test_score_windows_shapes_and_values(model):
    f = torch.rand(2, 12, 3, 40, 40) * 2 - 1
    p = model.score_windows(f)
    assert p.shape == (2, 5) and ((p > 0) & (p < 1)).all()
    single = torch.sigmoid(model(f[1:2, 3:11]))
    torch.testing.assert_close(p[1, 3], single[0], atol=1e-5, rtol=1e-5)
    pp = model.score_windows(f, pad=True)
    assert pp.shape == (2, 12)
    torch.testing.assert_close(pp[:, 7:], p, atol=1e-5, rtol=1e-5)
    padded = torch.cat([f[:1, :1].expand(1, 5, -1, -1, -1), f[:1, :3]], 1)
    torch.testing.assert_close(pp[0, 2], torch.sigmoid(model(padded))[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="clips"):
        model(torch.zeros(2, 7, 3, 32, 32))
    with pytest.raises(ValueError, match="frames"):
        model.score_windows(torch.zeros(1, 5, 3, 32, 32))


def test_incremental_equals_full(model):
    """Chunked incremental scoring (with a slot reset mid-way) == full padded sliding-window scoring."""
    torch.manual_seed(1)
    B, K, chunks = 3, 4, 5
    video = torch.rand(B, 1 + K * chunks, 3, 36, 36) * 2 - 1
    full = model.score_windows(video, pad=True)[:, 1:]  # windows ending at frames 1..T
    thr = float(full.median())
    model.threshold.fill_(thr)
    det = IncrementalSuccess(model, B, "cpu")
    det.reset_slots(torch.ones(B, dtype=torch.bool), video[:, 0])
    probs = []
    for s in range(chunks):
        ok, first = det.update(video[:, 1 + s * K : 1 + (s + 1) * K])
        probs.append(det.last_probs)
    torch.testing.assert_close(torch.cat(probs, 1), full, atol=1e-5, rtol=1e-5)
    hit = full > thr
    want_first = torch.where(hit.any(1), hit.long().argmax(1), torch.full((B,), -1))
    assert torch.equal(ok, hit.any(1)) and torch.equal(first, want_first)
    succ, first_full, _ = model.classify(video)
    assert torch.equal(succ, ok) and torch.equal(first_full, first)

    # continuous batching: slot 1 restarts on another video; its scores then match that video alone
    other = torch.rand(1, 1 + K * 2, 3, 36, 36) * 2 - 1
    mask = torch.tensor([False, True, False])
    firsts = video[:, 0].clone()
    firsts[1] = other[0, 0]
    det.reset_slots(mask, firsts)
    assert det.first_success[1] == -1 and not det.success[1] and det.num_frames[1] == 1
    keep_ok0 = det.success[0].clone()
    got = []
    for s in range(2):
        new = torch.rand(B, K, 3, 36, 36) * 2 - 1
        new[1] = other[0, 1 + s * K : 1 + (s + 1) * K]
        det.update(new)
        got.append(det.last_probs[1])
    torch.testing.assert_close(torch.cat(got), model.score_windows(other, pad=True)[0, 1:], atol=1e-5, rtol=1e-5)
    assert det.success[0] | ~keep_ok0  # slot 0 keeps its verdict (sticky)
    with pytest.raises(ValueError, match="mask"):
        det.reset_slots(torch.ones(2, dtype=torch.bool), video[:, 0])
    with pytest.raises(ValueError, match="new_frames"):
        det.update(torch.zeros(2, K, 3, 36, 36))


def test_training_separates_success_from_failure(tmp_path):
    rng = np.random.default_rng(0)
    eps = [blob_episode(rng, i % 2 == 0, task=("stack" if i % 4 < 2 else "coffee")) for i in range(24)]
    cfg = RewardTrainConfig(reward=TINY, steps=50, batch_size=16, lr=1e-3, warmup_steps=5, crop_pad=1,
                            val_fraction=0.25, test_fraction=0.25, eval_every=0, log_every=10, ckpt_every=50)
    m = train_reward_on_episodes(cfg, eps, tmp_path, device="cpu", show_progress=False)
    assert m["test_split"] == "test"
    assert set(m["test"]) == {"stack", "coffee", "all"}
    assert m["test"]["all"]["f1"] >= 0.9, m["test"]
    assert m["test"]["all"]["n"] == 8
    assert 0.0 < m["threshold"] < 1.0
    model = load_reward(tmp_path / "reward.pt")
    assert float(model.threshold) == pytest.approx(m["threshold"])
    # the trained model's trajectory verdicts on fresh episodes
    fresh = [blob_episode(np.random.default_rng(100 + i), i % 2 == 0) for i in range(6)]
    video = torch.stack([uint8_to_model(torch.from_numpy(e.frames)) for e in fresh])
    succ, first, _ = model.classify(video)
    assert succ.tolist() == [e.success for e in fresh]
    assert all(int(f) >= 14 for f, e in zip(first, fresh) if e.success)  # fires when the green block shows
    for f in ("config.json", "metrics.json", "train_state.pt"):
        assert (tmp_path / f).is_file()
    split = json.loads((tmp_path / "config.json").read_text())["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(len(split["train"] + split["val"] + split["test"])))


def test_training_needs_both_classes(tmp_path):
    rng = np.random.default_rng(0)
    eps = [blob_episode(rng, False) for _ in range(4)]
    with pytest.raises(ValueError, match="both classes"):
        train_reward_on_episodes(RewardTrainConfig(reward=TINY, steps=1), eps, tmp_path, device="cpu")
