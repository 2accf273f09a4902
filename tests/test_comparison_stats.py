"""Paired comparison of policies on the same evaluation states, and the world-model LR schedule."""
import math

import pytest

from wmpo.sim.evaluate import EpisodeResult, EvalResult, mcnemar_exact, paired_outcomes
from wmpo.train.world_model import WMTrainConfig, lr_at


def test_mcnemar_exact_matches_the_binomial_tail():
    r = mcnemar_exact([0] * 10 + [1] * 5, [1] * 10 + [1] * 5)
    assert (r["n01"], r["n10"]) == (10, 0) and r["p"] == pytest.approx(2 / 2 ** 10)
    r = mcnemar_exact([0] * 6 + [1], [1] * 6 + [0])
    assert (r["n01"], r["n10"]) == (6, 1) and r["p"] == pytest.approx(2 * (1 + 7) / 2 ** 7)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p"] == 1.0  # no discordant state
    assert mcnemar_exact([0, 1], [1, 0])["p"] == 1.0  # symmetric discordance, p capped at 1
    with pytest.raises(ValueError, match="same states"):
        mcnemar_exact([1, 0], [1])


def test_paired_outcomes_align_by_initial_state_index():
    def ev(pairs):
        return EvalResult("square", "eval", len(pairs), 0.0, (0.0, 1.0), math.nan,
                          episodes=[EpisodeResult(index=i, success=s, length=10) for i, s in pairs])
    a, b = paired_outcomes(ev([(2, True), (0, False), (1, False)]), ev([(1, True), (2, True), (5, True)]))
    assert a == [False, True] and b == [True, True]  # states 1 and 2, in index order


def test_world_model_lr_schedule():
    cfg = WMTrainConfig(steps=100, lr=1e-3, lr_schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(100, cfg) == pytest.approx(1e-4)
    assert 1e-4 < lr_at(55, cfg) < 1e-3
    assert lr_at(50, WMTrainConfig(lr=3e-4)) == 3e-4  # the paper's constant schedule is the default
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_at(0, WMTrainConfig(lr_schedule="linear"))


def test_fresh_initial_states_are_reproducible_and_disjoint_from_training():
    import numpy as np

    from wmpo.sim.initial_states import FRESH_SEED_RANGE, SEED_BASE, _distinct_seeds, fresh_initial_states

    seeds = _distinct_seeds(5, 50)
    assert len(set(seeds.tolist())) == 50 and seeds.min() >= FRESH_SEED_RANGE[0] > max(SEED_BASE.values()) + 1_000_000
    np.testing.assert_array_equal(seeds, _distinct_seeds(5, 50))
    assert not np.array_equal(seeds, _distinct_seeds(6, 50))
    a = fresh_initial_states("square", 5, 3, check_against=8)
    b = fresh_initial_states("square", 5, 3, check_against=0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, fresh_initial_states("square", 6, 3, check_against=0))
    with pytest.raises(ValueError, match="states_seed"):
        fresh_initial_states("square", -1, 3)


def test_eval_cli_on_fresh_states(tmp_path):
    import json

    from wmpo.cli import main

    out = tmp_path / "r.json"
    assert main(["eval", "--task", "square", "--policy", "random", "--states-seed", "3", "-n", "1", "--max-steps", "3",
                 "--videos", "0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["split"] == "fresh-3" and r["n"] == 1 and len(r["episodes"]) == 1
    with pytest.raises(SystemExit) as e:  # argparse: one usage error line naming --states-seed, exit 2
        main(["eval", "--task", "square", "--policy", "random", "--states-seed", "-2"])
    assert e.value.code == 2
