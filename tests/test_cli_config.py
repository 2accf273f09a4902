"""The train CLIs' config: preset section, then --config JSON, then --set, unknown fields rejected."""
import argparse
import json

import pytest

from wmpo.cli import config_args as cli_config
from wmpo.cli.train import policy_preset, vae_preset
from wmpo.config import get_preset
from wmpo.train.policy import PolicyTrainConfig
from wmpo.train.vae import VAETrainConfig


def _args(argv):
    ap = argparse.ArgumentParser()
    cli_config.add_config_args(ap, "steps=1")
    return ap.parse_args(argv)


def test_parse_overrides_nested_and_json_values():
    d = cli_config.parse_overrides(["steps=12", "lr=3e-4", "policy.hidden_size=128", "name=abc", "policy.dropout=0.1"])
    assert d == {"steps": 12, "lr": 3e-4, "name": "abc", "policy": {"hidden_size": 128, "dropout": 0.1}}
    with pytest.raises(ValueError, match="key=value"):
        cli_config.parse_overrides(["steps"])


def test_preset_then_json_then_set(tmp_path):
    extra = tmp_path / "c.json"
    extra.write_text(json.dumps({"steps": 7, "batch_size": 5, "policy": {"vision_layers": 3}}))
    cfg = cli_config.config_from_args(_args(["--preset", "tiny", "--config", str(extra), "--set", "steps=9", "policy.hidden_size=96"]),
                                      policy_preset)
    tiny = get_preset("tiny").policy_train
    assert isinstance(cfg, PolicyTrainConfig)
    assert (cfg.steps, cfg.batch_size, cfg.lr) == (9, 5, tiny.lr)  # --set wins over the JSON, which wins over the preset
    assert (cfg.policy.hidden_size, cfg.policy.vision_layers, cfg.policy.image_size) == (96, 3, tiny.policy.image_size)


def test_unknown_fields_are_errors_naming_them():
    with pytest.raises(ValueError, match=r"policy\.hidden"):
        cli_config.config_from_args(_args(["--set", "policy.hidden=3"]), policy_preset)
    with pytest.raises(ValueError, match="stepz"):
        cli_config.config_from_args(_args(["--set", "stepz=3"]), policy_preset)


def test_tuples_survive_and_legacy_flags_apply_last():
    cfg = cli_config.config_from_args(_args(["--set", "steps=3"]), vae_preset, extra=cli_config.given({"steps": None, "vae": {"frame_size": 32}}))
    assert isinstance(cfg, VAETrainConfig)
    assert cfg.steps == 3 and cfg.vae.frame_size == 32
    assert isinstance(cfg.vae.block_channels, tuple) and cfg.vae.block_channels == get_preset("tiny").vae_train.vae.block_channels
    assert cli_config.given({"a": None, "b": {"c": None}, "d": 1}) == {"d": 1}


def test_wmpo_command_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from wmpo.cli import main

    monkeypatch.delenv("WMPO_DEBUG", raising=False)
    assert main(["train-policy", "--store", str(tmp_path / "none.h5"), "--out", str(tmp_path / "p"), "--set", "stepz=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wmpo train-policy: error:") and "stepz" in err and "Traceback" not in err
