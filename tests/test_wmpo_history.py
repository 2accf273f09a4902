"""WMPO's per-iteration record: the imagined success rate is over every imagined trajectory (kept or
dropped by dynamic sampling), the kept groups' rate is its own key, and records of older runs resume."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_workers  # noqa: E402

from wmpo.rl.grpo import GRPOConfig  # noqa: E402
from wmpo.rl.wmpo import upgrade_history_record, wmpo_train  # noqa: E402
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def test_upgrade_history_record():
    old = {"iteration": 1, "trajectories": 8, "imagined_success_rate": 0.125, "groups_tried": 32}
    new = upgrade_history_record(old)
    assert new["kept_success_rate"] == 0.125 and "imagined_success_rate" not in new and new["groups_tried"] == 32
    assert "imagined_success_rate" in old  # the input is not changed
    cur = {"iteration": 2, "imagined_trajectories": 64, "imagined_success_rate": 0.02, "kept_success_rate": 0.25}
    assert upgrade_history_record(cur) == cur


def test_record_rates_and_resume(tmp_path):
    torch.manual_seed(0)
    env, pol, tok, det, pool, rcfg = dist_workers.toy_components()
    grpo = GRPOConfig(batch_size=4, group_size=2, minibatch_size=4, micro_batch_chunks=3, lr=1e-3, dynamic_sampling=False)
    state = tmp_path / "state.pt"
    hist = wmpo_train(env, pol, tok, det, pool, "lift", grpo=grpo, rollout=rcfg, iterations=1, horizon=8, seed=1,
                      state_path=state)
    rec = hist[0]
    # without dynamic sampling every finished trajectory is kept: the two rates agree
    assert rec["imagined_trajectories"] == rec["trajectories"] == 4
    assert rec["imagined_success_rate"] == rec["kept_success_rate"]
    # a run saved by an older version (its rate was the kept groups') resumes with the record upgraded
    st = load_checkpoint(state)
    st["history"] = [{k: v for k, v in h.items() if k not in ("imagined_trajectories", "kept_success_rate")} for h in st["history"]]
    save_checkpoint(state, st)
    hist = wmpo_train(env, pol, tok, det, pool, "lift", grpo=grpo, rollout=rcfg, iterations=2, horizon=8, seed=1,
                      state_path=state)
    assert len(hist) == 2
    assert "imagined_success_rate" not in hist[0] and hist[0]["kept_success_rate"] == rec["kept_success_rate"]
    assert "imagined_success_rate" in hist[1] and "imagined_trajectories" in hist[1]


def test_record_counts_dropped_groups():
    torch.manual_seed(0)
    env, pol, tok, det, pool, rcfg = dist_workers.toy_components()
    grpo = GRPOConfig(batch_size=4, group_size=2, minibatch_size=4, micro_batch_chunks=3, lr=1e-3, dynamic_sampling=True)
    rec = wmpo_train(env, pol, tok, det, pool, "lift", grpo=grpo, rollout=rcfg, iterations=1, horizon=8, seed=1)[0]
    assert rec["groups_dropped"] >= 1  # this toy setting draws uniform groups (checked), so the rates differ in kind
    assert rec["imagined_trajectories"] >= 2 * rec["groups_tried"] > rec["trajectories"] == 4
    assert rec["kept_success_rate"] == 0.5  # two mixed groups of 2: one success each
    n = rec["imagined_trajectories"]
    assert abs(rec["imagined_success_rate"] * n - round(rec["imagined_success_rate"] * n)) < 1e-9
