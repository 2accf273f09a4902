"""Resuming a run written by an older wmpo: fields added since are recorded with --upgrade-config,
changed values are always refused."""
import json
from dataclasses import asdict

import pytest

from wmpo.config import get_preset
from wmpo.pipeline.run import config_changes, run_pipeline


def test_config_changes_separates_added_from_changed():
    saved = {"a": 1, "b": {"c": 2, "gone": 0}}
    now = {"a": 1, "b": {"c": 3, "new": 5}, "top": 1}
    changed, added = config_changes(saved, now)
    assert sorted(changed) == ["b.c", "b.gone"] and sorted(added) == ["b.new", "top"]
    assert config_changes(saved, saved) == ([], [])


def _old_run(tmp_path, mutate):
    cfg = get_preset("micro", task="square")
    old = json.loads(json.dumps(asdict(cfg), default=str))
    mutate(old)
    out = tmp_path / "run"
    (out / "stages").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(old))
    (out / "stages" / "demos.json").write_text(json.dumps({"stage": "demos", "seconds": 0.0, "finished": "-", "outputs": {}}))
    return cfg, out


def test_added_fields_need_upgrade_flag_then_are_recorded(tmp_path):
    cfg, out = _old_run(tmp_path, lambda d: (d.pop("wmpo_real_eval_every"), d["wm_pretrain"].pop("grad_accum")))
    with pytest.raises(ValueError, match="upgrade-config"):
        run_pipeline(cfg, out, stop_after="demos")
    run_pipeline(cfg, out, stop_after="demos", upgrade_config=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["wmpo_real_eval_every"] == cfg.wmpo_real_eval_every and saved["wm_pretrain"]["grad_accum"] == 1
    run_pipeline(cfg, out, stop_after="demos")  # now identical: resumes without the flag


def test_changed_values_are_refused_even_with_upgrade(tmp_path):
    cfg, out = _old_run(tmp_path, lambda d: d.update(real_budget=999))
    with pytest.raises(ValueError, match="changed: \\['real_budget'\\]"):
        run_pipeline(cfg, out, stop_after="demos", upgrade_config=True)
