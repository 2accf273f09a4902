"""Per-task base policy and reward model on real simulator data (issue: policy + reward numbers).

For each task, with the library's own commands (printed as they run):
  1. `wmpo collect --policy expert`           expert demos (D0 seeds 0..)
  2. `wmpo train-policy`                      behaviour cloning of the built-in VLA on them
  3. `wmpo collect --policy <bc> --split eval` greedy episodes on the evaluation initial states:
                                              the base policy's real success rate (Wilson 95% CI)
  4. `wmpo collect --policy <bc> --split train --temperature T`
                                              sampled rollouts on the training initial states (the
                                              pipeline's base_rollouts; T = GRPO's 1.6 by default)
  5. `wmpo train-reward` on demos + both rollout sets: precision / recall / F1 on its held-out test
                                              trajectories (split per outcome inside train-reward),
                                              and on the policy's trajectories among them alone

Every step is skipped when its output is already there, so an interrupted run resumes. Writes
OUT/<task>/... and bench/results/base_policy-<tasks>-<date>.json.

  python bench/base_policy.py --tasks square stack_three --out /tmp/bc
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_sha  # noqa: E402

POLICY_SET = ["policy.image_size=64", "policy.patch_size=8", "policy.hidden_size=128", "policy.vision_layers=3",
              "policy.fusion_layers=2", "batch_size=64", "lr=5e-4", "warmup_steps=100", "min_lr_ratio=0.1", "crop_pad=4",
              "log_every=100", "eval_every=500", "ckpt_every=500"]
"""tiny preset's policy, widened to 64x64 input, hidden 128 and 3 ViT layers (1.3M parameters)"""
REWARD_SET = ["eval_every=0", "ckpt_every=500"]
"""tiny preset's reward model (32x32 clips, 2 VideoMAE layers)"""


def _run(cmd: list[str], log: Path) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "WMPO_NO_PROGRESS": "1"}
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    dt = time.perf_counter() - t0
    print(f"  {dt:.0f} s", flush=True)
    return dt


def _store_outcomes(path: Path) -> tuple[int, int, float | None]:
    from wmpo.data.store import TrajectoryStore

    with TrajectoryStore(path) as store:
        eps = [store.load(i) for i in range(len(store))]
    succ = [e for e in eps if e.success]
    mean_len = sum(len(e.actions) for e in succ) / len(succ) if succ else None
    return len(eps), len(succ), mean_len


def _reward_on_policy_test(task: str, stores: list[Path], n_demos: int, reward_dir: Path, threshold: float) -> dict:
    """Precision / recall / F1 over the held-out test trajectories that the policy produced (the
    expert demos in the test split left out: telling expert successes from policy failures is easier)."""
    import torch

    from wmpo.models.reward import load_reward
    from wmpo.data.loader import load_episodes
    from wmpo.train.reward import per_task_metrics, trajectory_scores

    test = json.loads((reward_dir / "config.json").read_text())["split"]["test"]
    episodes, _ = load_episodes(stores)  # the order train-reward saw: demos, then rollouts, then eval
    eps = [episodes[int(i)] for i in test if int(i) >= n_demos]  # int(): older runs saved them as strings
    if not eps:
        return {}
    scores = trajectory_scores(load_reward(reward_dir / "reward.pt"), eps, torch.device("cpu"))
    return per_task_metrics(eps, scores, threshold).get(task, {})


def run_task(task: str, out: Path, a: argparse.Namespace) -> dict:
    from wmpo.sim.evaluate import wilson_interval

    d = out / task
    d.mkdir(parents=True, exist_ok=True)
    log = d / "log.txt"
    done_path = d / "result.json"
    if done_path.is_file():
        return json.loads(done_path.read_text())
    wmpo = [sys.executable, "-m", "wmpo"]
    seconds: dict[str, float] = {}
    demos, pol, ev, ro, rw = d / "demos.h5", d / "policy", d / "eval.h5", d / "rollouts.h5", d / "reward"
    common = ["--task", task, "--workers", str(a.workers), "--image-size", "64"]
    cap = ["--max-steps", str(a.max_steps)] if a.max_steps else []
    for name, path, extra in [
        ("demos", demos, ["--policy", "expert", "--episodes", str(a.demos)]),
        ("policy", None, None),
        ("eval", ev, ["--split", "eval", "--episodes", str(a.eval_episodes), *cap]),
        ("rollouts", ro, ["--split", "train", "--episodes", str(a.rollouts), "--temperature", str(a.temperature), *cap]),
    ]:
        if name == "policy":
            if not (pol / "metrics.json").is_file():
                seconds["policy"] = _run(wmpo + ["train-policy", "--store", str(demos), "--out", str(pol), "--preset", "tiny",
                                                 "--set", f"steps={a.steps}", *POLICY_SET], log)
            continue
        marker = path.with_name(path.name + ".done")
        if not marker.is_file():
            # a store is appended to when it exists: start an unfinished one over
            for leftover in (path, path.with_name(path.name + ".episodes")):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                elif leftover.exists():
                    leftover.unlink()
            src = ["--policy", str(pol / "policy.pt")] if name != "demos" else []
            seconds[name] = _run(wmpo + ["collect", *common, *src, *extra, "--out", str(path)], log)
            marker.touch()
    if not (rw / "metrics.json").is_file():
        seconds["reward"] = _run(wmpo + ["train-reward", "--store", str(demos), str(ro), str(ev), "--out", str(rw), "--preset", "tiny",
                                         "--set", f"steps={a.reward_steps}", *REWARD_SET], log)
    n, k, mean_len = _store_outcomes(ev)
    n_ro, k_ro, _ = _store_outcomes(ro)
    n_demo, k_demo, demo_len = _store_outcomes(demos)
    bc = json.loads((pol / "metrics.json").read_text())
    reward = json.loads((rw / "metrics.json").read_text())
    reward_policy = _reward_on_policy_test(task, [demos, ro, ev], n_demo, rw, reward["threshold"])
    res = {
        "task": task,
        "demos": {"episodes": n_demo, "successes": k_demo, "mean_length": demo_len},
        "bc": {k2: bc.get(k2) for k2 in ("steps", "params", "val/loss", "val/token_acc", "val/action_l1", "train/steps_per_sec", "wall_s")},
        "base_policy_eval": {"split": "eval", "greedy": True, "episodes": n, "successes": k, "success_rate": k / max(n, 1),
                             "ci95": list(wilson_interval(k, n)), "mean_success_length": mean_len},
        "base_rollouts_train": {"temperature": a.temperature, "episodes": n_ro, "successes": k_ro, "success_rate": k_ro / max(n_ro, 1)},
        "reward": reward,
        "reward_policy_test": reward_policy,
        "seconds": seconds,
    }
    done_path.write_text(json.dumps(res, indent=2))
    return res


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(k: int, n: int, ci: list[float]) -> str:
    return f"{k}/{n} = {100 * k / max(n, 1):.0f}% [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"


def markdown_table(results: dict[str, dict]) -> str:
    """One row per task: demos, BC, base success (eval, greedy), sampled rollouts, reward P / R / F1."""
    from wmpo.sim.evaluate import wilson_interval

    rows = ["| task | expert demos (mean length) | BC val token acc / action L1 | base policy, eval split, greedy | "
            "base policy, train split, T=1.6 | reward, held-out test: P / R / F1 (n, positives) | reward, policy trajectories of the test split |",
            "|---|---|---|---|---|---|---|"]
    for t, r in results.items():
        e, ro, bc = r["base_policy_eval"], r["base_rollouts_train"], r["bc"]
        rw = r["reward"].get("test", {}).get(t, {})
        rp = r.get("reward_policy_test") or {}
        rp_s = (f"{rp['n']} trajectories, {rp['positives']} successes: accuracy {rp['accuracy']:.2f}"
                + (f", P / R / F1 {rp['precision']:.2f} / {rp['recall']:.2f} / {rp['f1']:.2f}" if rp.get("positives") else "")) if rp else "-"
        rows.append(f"| {t} | {r['demos']['episodes']} ({r['demos']['mean_length']:.0f} steps) | "
                    f"{_num(bc.get('val/token_acc'), 2)} / {_num(bc.get('val/action_l1'), 3)} | "
                    f"{_pct(e['successes'], e['episodes'], e['ci95'])} | "
                    f"{_pct(ro['successes'], ro['episodes'], list(wilson_interval(ro['successes'], ro['episodes'])))} | "
                    f"{rw.get('precision', 0):.2f} / {rw.get('recall', 0):.2f} / {rw.get('f1', 0):.2f} ({rw.get('n', 0)}, {rw.get('positives', 0)}) | "
                    f"{rp_s} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["square", "stack_three", "three_piece_assembly", "coffee"])
    ap.add_argument("--out", default="runs/base_policy", help="working folder (resumable)")
    ap.add_argument("--demos", type=int, default=100, help="expert demos per task")
    ap.add_argument("--steps", type=int, default=3000, help="behaviour-cloning steps (batch 64)")
    ap.add_argument("--eval-episodes", type=int, default=50, help="greedy episodes on the evaluation initial states")
    ap.add_argument("--rollouts", type=int, default=32, help="sampled rollouts on the training initial states")
    ap.add_argument("--temperature", type=float, default=1.6, help="sampling temperature of those rollouts")
    ap.add_argument("--reward-steps", type=int, default=1000, help="reward-model training steps")
    ap.add_argument("--workers", type=int, default=2, help="simulator worker processes")
    ap.add_argument("--max-steps", type=int, default=None, help="cap policy episodes below the task horizon (smoke tests)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder for the result JSON")
    a = ap.parse_args(argv)
    out = Path(a.out)
    results = {t: run_task(t, out, a) for t in a.tasks}
    for t, r in results.items():
        e, rw = r["base_policy_eval"], r["reward"].get("test", {}).get(t, {})
        print(f"{t}: base {e['successes']}/{e['episodes']} = {100 * e['success_rate']:.0f}% "
              f"[{100 * e['ci95'][0]:.0f}, {100 * e['ci95'][1]:.0f}]; sampled T={a.temperature}: "
              f"{r['base_rollouts_train']['successes']}/{r['base_rollouts_train']['episodes']}; reward test {rw}; "
              f"policy trajectories only {r['reward_policy_test']}")
    print(markdown_table(results))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(a.results) / f"base_policy-{'-'.join(a.tasks)}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"git_sha": git_sha(), "date": stamp, "device": "cpu", "args": vars(a), "policy_set": POLICY_SET,
                                "reward_set": REWARD_SET, "tasks": results}, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
