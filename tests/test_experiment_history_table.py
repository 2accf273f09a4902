"""experiments/coffee-cpu/history_table.py: the README's WMPO table is read from a state's history."""

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "coffee-cpu" / "history_table.py"


def _record(it, tried, dropped, **extra):
    rec = {"iteration": it, "groups_tried": tried, "groups_dropped": dropped, "trajectories": 8 * (tried - dropped),
           "grpo/success_rate": 0.25, "grpo/entropy": 3.5, "grpo/grad_norm": 0.4, "grpo/clip_frac": 0.0,
           "grpo/ratio_mean": 1.0, "grpo/ratio_min": 0.9, "grpo/ratio_max": 1.1, "grpo/optimizer_steps": 1,
           "rollout_seconds": 1500.0}
    rec.update(extra)
    return rec


def _run(path):
    return subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, timeout=120)


def test_table_reads_every_record_and_marks_old_ones(tmp_path):
    history = [
        _record(1, 32, 31, imagined_success_rate=2 / 8),  # an old record: its rate was the kept batch's
        _record(2, 32, 28, imagined_success_rate=5 / 256, imagined_trajectories=256, kept_success_rate=5 / 32,
                **{"real/success_rate": 2 / 24, "real/episodes": 24}),
    ]
    state = tmp_path / "state.pt"
    torch.save({"history": history, "iteration": 2}, state)
    out = _run(state)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == lines[3].count("|")
    assert "| 1 | 1 / 32 | not recorded | 2/8 |" in lines[2]  # the old rate shown as the kept batch's
    assert "| 2 | 4 / 32 | 2.0% (5/256) | 5/32 |" in lines[3]
    assert "2/24 = 8.3%" in lines[3]
    torch.save({"history": [_record(3, 32, 32)]}, state)  # no rate of either kind
    out = _run(state)
    assert out.returncode == 0 and "| 3 | 0 / 32 | not recorded | not recorded |" in out.stdout


def test_table_refuses_a_file_without_history(tmp_path):
    bad = tmp_path / "state.pt"
    torch.save({"policy": {}}, bad)
    out = _run(bad)
    assert out.returncode == 2 and "no WMPO history" in out.stderr
    out = _run(tmp_path / "missing.pt")
    assert out.returncode == 2 and "no such file" in out.stderr
