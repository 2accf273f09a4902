"""The world-model pretraining corpus: perturbed experts, resumable multi-task collection."""
import json

import numpy as np
import pytest

from wmpo.sim.corpus import CorpusConfig, collect_corpus, corpus_counts, corpus_store_path, stored_seeds
from wmpo.sim.expert_noise import ActionPerturber, ExpertNoise


def test_perturber_is_reproducible_bounded_and_clean_when_drawn_clean():
    noise = ExpertNoise(clean_fraction=0.0, sigma=(0.2, 0.2), burst_prob=(0.5, 0.5), slip_prob=(0.5, 0.5))
    a = np.array([0.9, -0.9, 0.1, 0.0, 0.0, 0.0, 1.0])
    p1, p2 = ActionPerturber(noise, 7), ActionPerturber(noise, 7)
    out1 = np.stack([p1(a) for _ in range(50)])
    out2 = np.stack([p2(a) for _ in range(50)])
    np.testing.assert_array_equal(out1, out2)  # same seed -> same perturbation
    assert np.all(np.abs(out1) <= 1.0) and not np.allclose(out1, a)
    assert p1.summary()["bursts"] > 0 and p1.summary()["slips"] > 0
    assert np.any(out1[:, 6] == -1.0)  # a slip inverts the gripper command
    other = np.stack([ActionPerturber(noise, 8)(a) for _ in range(5)])
    assert not np.allclose(other, out1[:5])
    clean = ActionPerturber(ExpertNoise(clean_fraction=1.0), 3)
    np.testing.assert_array_equal(clean(a), a)
    assert clean.summary()["clean"] is True


def test_expert_noise_validates_and_round_trips():
    n = ExpertNoise(sigma=(0.1, 0.2))
    assert ExpertNoise.from_dict(json.loads(json.dumps(n.to_dict()))) == n
    with pytest.raises(ValueError, match="sigma"):
        ExpertNoise(sigma=(0.3, 0.1))
    with pytest.raises(ValueError, match="clean_fraction"):
        ExpertNoise(clean_fraction=1.5)
    with pytest.raises(ValueError, match="burst_prob"):
        ExpertNoise(burst_prob=(0.5, 2.0))


def test_corpus_collects_balanced_resumes_without_duplicates(tmp_path):
    cfg = CorpusConfig(tasks=("square", "coffee"), episodes_per_task=2, image_size=16, round_size=1, max_steps=6,
                       noise=ExpertNoise(clean_fraction=0.0))
    counts = collect_corpus(tmp_path, cfg, num_workers=1, show_progress=False, max_rounds=1)
    assert counts == {"square": {"episodes": 1, "successes": 0}, "coffee": {"episodes": 1, "successes": 0}}
    counts = collect_corpus(tmp_path, cfg, num_workers=1, show_progress=False)  # resumes, tops up
    assert {t: c["episodes"] for t, c in counts.items()} == {"square": 2, "coffee": 2}
    for task in cfg.tasks:
        assert sorted(stored_seeds(corpus_store_path(tmp_path, task))) == [cfg.seed_base, cfg.seed_base + 1]
    collect_corpus(tmp_path, cfg, num_workers=1, show_progress=False)  # complete: nothing more is run
    assert corpus_counts(tmp_path, cfg.tasks)["square"]["episodes"] == 2
    from wmpo.data.store import TrajectoryStore

    with TrajectoryStore(corpus_store_path(tmp_path, "square")) as st:
        ep = st.load(0)
    assert len(ep) == 6 and ep.meta["expert_noise"]["clean"] is False and ep.meta["seed"] == cfg.seed_base
    manifest = json.loads((tmp_path / "corpus.json").read_text())
    assert manifest["counts"]["coffee"]["episodes"] == 2 and manifest["config"]["noise"]["clean_fraction"] == 0.0
    with pytest.raises(ValueError, match="task"):
        collect_corpus(tmp_path, CorpusConfig(tasks=("nope",)), show_progress=False)
