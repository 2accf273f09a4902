"""bench/base_policy.py end to end at a few steps of everything (slow: five `wmpo` processes)."""
import importlib.util
import json
import pathlib

import pytest


@pytest.mark.slow
def test_base_policy_bench_runs_and_resumes(tmp_path):
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "base_policy.py"
    spec = importlib.util.spec_from_file_location("bench_base_policy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--tasks", "square", "--out", str(tmp_path / "run"), "--results", str(tmp_path / "res"), "--demos", "2", "--steps", "2",
            "--eval-episodes", "2", "--rollouts", "2", "--reward-steps", "2", "--max-steps", "16", "--workers", "1"]
    assert bench.main(argv) == 0
    (res,) = (tmp_path / "res").glob("base_policy-square-*.json")
    r = json.loads(res.read_text())["tasks"]["square"]
    assert r["demos"] == {"episodes": 2, "successes": 2, "mean_length": r["demos"]["mean_length"]}
    assert r["base_policy_eval"]["episodes"] == 2 and r["base_rollouts_train"]["episodes"] == 2
    assert 0.0 <= r["base_policy_eval"]["ci95"][0] <= r["base_policy_eval"]["ci95"][1] <= 1.0
    assert "square" in r["reward"]["test"] and "threshold" in r["reward"]
    assert set(r["reward_policy_test"]) >= {"precision", "recall", "f1", "n"}
    # a second run finds every step done and returns the same result without running anything
    assert bench.main(argv) == 0
    assert json.loads((tmp_path / "run" / "square" / "result.json").read_text()) == r
