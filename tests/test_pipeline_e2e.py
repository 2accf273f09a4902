"""End to end: the micro preset runs every stage of `wmpo run` (a few steps each) and resumes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wmpo.config import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WMPO_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "wmpo.cli", "run", "--task", "square", "--preset", "micro", "--out", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=1800)  # ~5 min on 2 idle cores; 3x that under load


def test_presets_resolve_and_are_consistent():
    for name in PRESETS:
        cfg = get_preset(name, task="square")
        vae = cfg.vae_train.vae
        assert vae.frame_size == cfg.image_size
        assert cfg.world_model.latent_size * 2 ** (len(vae.block_channels) - 1) == cfg.image_size
        assert cfg.grpo.batch_size % cfg.grpo.group_size == 0
        assert cfg.rollout.group_size == cfg.grpo.group_size
    with pytest.raises(ValueError, match="preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown RunConfig fields"):
        get_preset("tiny", nonsense=1)


@pytest.mark.timeout(3600)  # two `wmpo run` calls, every stage of the micro preset (lifelong and its baselines included)
def test_micro_pipeline_end_to_end_and_resume(tmp_path):
    out = tmp_path / "run"
    # first run stops after policy SFT (as if killed there)
    p = _run(out, "--baselines", "--lifelong", "1", "--stop-after", "policy_sft")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    done_first = {m.stem: json.loads(m.read_text())["finished"] for m in (out / "stages").glob("*.json")}
    assert set(done_first) == {"demos", "policy_sft"}  # the policy's branch runs before the corpus / world-model stages
    # the rerun resumes: finished stages are not redone, the rest run, the report is written
    p = _run(out, "--baselines", "--lifelong", "1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for name, when in done_first.items():
        assert f"[stage {name}] done earlier, skipped" in p.stdout
        assert json.loads((out / "stages" / f"{name}.json").read_text())["finished"] == when
    report = (out / "report.md").read_text()
    assert all(m in report for m in ("Base policy (SFT)", "WMPO (ours)", "Online GRPO", "DPO", "Lifelong WMPO"))
    ev = json.loads((out / "eval" / "results.json").read_text())
    assert set(ev) == {"base", "wmpo", "online_grpo", "dpo", "lifelong"} and all(0.0 <= r["success_rate"] <= 1.0 for r in ev.values())
    hist = json.loads((out / "policy_wmpo" / "history.json").read_text())
    assert len(hist) == 1
    assert 0.0 <= hist[0]["real/success_rate"] <= 1.0 and hist[0]["real/episodes"] == 2  # the real-check curve
    base_point = json.loads((out / "policy_wmpo" / "real_eval_base.json").read_text())  # the curve's start: the base policy
    assert 0.0 <= base_point["success_rate"] <= 1.0 and base_point["episodes"] == 2 and "| 0 (base policy) |" in report
    assert list((out / "videos" / "imagined_vs_real").glob("*.mp4"))
    lifelong = json.loads((out / "lifelong" / "lifelong.json").read_text())
    assert lifelong["done"] == 1 and len(lifelong["data"]) == 1
    # Fig. 6: DPO rounds and BC on more demos over the same rounds, in the report
    rounds = json.loads((out / "lifelong_baselines" / "rounds.json").read_text())
    assert set(rounds["dpo"]) == {"1", "2"} and set(rounds["bc"]) == {"1", "2"}
    assert [rounds["bc"][k]["demos"] for k in ("1", "2")] == [2 + 8, 2 + 16]  # micro: 2 demos, P = 8
    assert rounds["dpo"]["1"]["checkpoint"].endswith("baselines/dpo.pt")  # round 1 is the DPO baseline
    assert not (out / "lifelong_baselines" / "dpo_round1").exists()  # (nothing collected or trained again for it)
    assert all(0.0 <= r["success_rate"] <= 1.0 for kind in ("dpo", "bc") for r in rounds[kind].values())
    assert "## Lifelong learning (paper Fig. 6)" in report and "| 2 | 2 x P |" in report
    # the CPU-recipe stages: multi-task corpus, held-out real episodes, diagnostics, result.json
    corpus = json.loads((out / "stages" / "corpus.json").read_text())["outputs"]
    assert set(corpus["counts"]) == {"square", "coffee"} and corpus["episodes"] == 2
    diag = json.loads((out / "diagnostics" / "diagnostics.json").read_text())
    # the rollout's and the diagnostic step counts, and the few-step student's (micro distils the world model)
    assert set(diag["fidelity"]) == {"2_steps", "3_steps", f"student_{get_preset('micro').student_steps}_steps"}
    assert diag["episodes"] == 2
    at8 = diag["fidelity"]["2_steps"]["at"]["8"]
    assert {"imagined_psnr", "first_frame_psnr", "vae_psnr"} <= set(at8) and at8["episodes"] == 2
    assert 0.0 <= diag["outcome_agreement"] <= 1.0 and diag["closed_loop"]["trajectories"] == 2
    assert diag["action_sensitivity"]["windows"] == 64 and {"t0.3", "t0.7"} <= set(diag["action_sensitivity"])
    res = json.loads((out / "result.json").read_text())
    for key in ("task", "preset", "methods", "wmpo_vs_base_mcnemar_p", "outcome_agreement", "reward_f1_policy",
                "imagined_vs_real_base", "wall_s"):
        assert key in res, key
    assert set(res["methods"]) >= {"base", "wmpo", "online_grpo", "dpo"}
    assert all({"successes", "episodes", "ci95", "mean_success_length"} <= set(m) for m in res["methods"].values())
    assert 0.0 <= res["wmpo_vs_base_mcnemar_p"] <= 1.0 and res["wall_s"]["total"] > 0
    assert "## Diagnostics" in report and "Action sensitivity" in report
    # evaluation resumes per policy: a run killed during evaluation keeps the policies already evaluated
    base_json = (out / "eval" / "base.json").read_text()
    (out / "stages" / "evaluate.json").unlink()
    (out / "eval" / "wmpo.json").unlink()
    p = _run(out, "--baselines", "--lifelong", "1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "[stage evaluate] running" in p.stdout and (out / "eval" / "wmpo.json").is_file()
    assert (out / "eval" / "base.json").read_text() == base_json
    ev2 = json.loads((out / "eval" / "results.json").read_text())
    assert ev2["base"] == ev["base"] and ev2["wmpo"]["vs_base_mcnemar"]["p"] <= 1.0
    # a different config into the same folder is refused
    p = _run(out, "--baselines", "--lifelong", "1", "--seed", "1")
    assert p.returncode != 0 and "different config" in (p.stdout + p.stderr)
