"""`wmpo run --disruptions`: every policy of the run evaluated on its task's disruption (paper Table 2)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from wmpo.pipeline.disruptions import disruption_report_lines, stage_disruptions, task_disruption

ROOT = Path(__file__).resolve().parents[1]


def test_each_task_has_its_disruption_and_coffee_has_none(tmp_path):
    assert [task_disruption(t) for t in ("square", "stack_three", "three_piece_assembly", "coffee")] == \
        ["position", "background", "texture", None]
    ctx = SimpleNamespace(cfg=SimpleNamespace(task="coffee"), out=tmp_path)
    out = stage_disruptions(ctx)  # nothing to evaluate: no earlier stage is even looked at
    assert out == {"task": "coffee", "disruption": None, "results": {}}
    text = "\n".join(disruption_report_lines(out, {}))
    assert "## Disruptions" in text and "`coffee` has no disruption scenario" in text
    assert disruption_report_lines(None, {}) == []


@pytest.mark.timeout(3600)  # the micro pipeline, then a rerun with --disruptions
def test_micro_run_with_disruptions(tmp_path):
    """The micro preset up to evaluation, then --disruptions on the finished run: the disrupted
    evaluation of base and WMPO and the Table-2 section are added; a rerun keeps them."""
    out = tmp_path / "run"
    env = {**os.environ, "WMPO_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}

    def run(*extra):
        p = subprocess.run([sys.executable, "-m", "wmpo.cli", "run", "--task", "square", "--preset", "micro", "--out", str(out),
                            *extra], env=env, capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p

    run()
    assert "## Disruptions" not in (out / "report.md").read_text()
    p = run("--disruptions")
    assert "[stage disruptions] running" in p.stdout and "[stage report] running" in p.stdout
    assert "[stage evaluate] done earlier, skipped" in p.stdout
    res = json.loads((out / "eval" / "disrupted_results.json").read_text())
    assert set(res) == {"base", "wmpo"}
    for r in res.values():
        assert r["disruption"] == "position" and r["n"] == 2 and 0.0 <= r["success_rate"] <= 1.0
        assert 0.0 <= r["vs_nominal_mcnemar"]["p"] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Disruptions (paper Table 2)" in report and "Disruption `position` of task `square`" in report
    assert report.count("| WMPO (ours) |") == 2  # Table 1 and Table 2
    summary = json.loads((out / "result.json").read_text())["disruption"]
    assert summary["name"] == "position" and set(summary["methods"]) == {"base", "wmpo"}
    p = run()  # without the flag: the result stays in the run and in its report
    assert "[stage disruptions] done earlier, skipped" in p.stdout
    assert "## Disruptions (paper Table 2)" in (out / "report.md").read_text()
