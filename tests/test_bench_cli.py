"""`wmpo bench` (issue 14, part 3; issue 15 item 4): one command, one JSON schema, on the CPU with the micro
preset, a list of step counts, a user's own world model (--model), and a run folder with a distilled
student (--checkpoint: teacher and student timed in one run)."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from wmpo.cli import main as wmpo_main

FAST = ["--repeats", "2", "--chunks", "1", "--warmup", "1", "--batch", "2", "--quiet"]
SUMMARY_KEYS = {"frames_per_sec", "frames_per_sec_spread", "mfu", "backend", "threads", "device", "command", "git_sha",
                "headline", "table"}


def _bench(tmp_path, *args, name="out.json"):
    out = tmp_path / name
    rc = wmpo_main(["bench", *FAST, "--out", str(out), *args])
    return rc, (json.loads(out.read_text()) if out.exists() else None)


def _rows(doc, mode):
    return [r for r in doc["rows"] if r["mode"] == mode]


def test_micro_preset_on_the_cpu_writes_the_schema(tmp_path, capsys):
    rc, doc = _bench(tmp_path, "--peak-tflops", "1")
    assert rc == 0
    assert doc["schema"] == "wmpo.bench/1"
    assert SUMMARY_KEYS <= set(doc["summary"])
    s = doc["summary"]
    assert s["frames_per_sec"] > 0 and s["threads"] == torch.get_num_threads() and s["command"].startswith("wmpo bench")
    assert s["backend"] in ("cpp", "ref") and s["device"].startswith("cpu")
    assert 0 < s["mfu"] < 1  # --peak-tflops 1: counted FLOPs over a 1 TFLOP/s peak
    assert {r["mode"] for r in doc["rows"]} == {"imagine_reference", "imagine", "loop", "grpo"}
    for r in doc["rows"]:
        f = r["frames_per_sec"]
        assert f["n"] == 2 and f["min"] <= f["median"] <= f["max"] and f["min"] > 0 and r["flops_per_frame"] > 0
    assert "speedup_vs_reference" in _rows(doc, "imagine")[0]
    assert set(_rows(doc, "loop")[0]["time_split"]) >= {"policy", "world_model", "vae", "reward"}
    grpo = _rows(doc, "grpo")[0]
    # no trained reward model here: it is evaluated but its verdict unused, so every trajectory reaches the horizon
    assert "random weights" in grpo["reward_model"] and grpo["at_horizon_fraction"] == 1.0
    assert grpo["horizon_steps"] == 16 and grpo["rounds"][0]["trajectories"] == 2
    assert "imagine" in capsys.readouterr().out  # the table for people


def test_a_list_of_step_counts_gives_one_row_per_count(tmp_path):
    rc, doc = _bench(tmp_path, "--steps", "4,1", "--modes", "imagine", "--no-reference")
    assert rc == 0
    assert [(r["mode"], r["steps"]) for r in doc["rows"]] == [("imagine", 4), ("imagine", 1)]
    assert doc["summary"]["headline"].startswith("imagine teacher 4 steps")


def test_a_shorter_grpo_horizon_is_recorded_as_not_the_horizon(tmp_path):
    rc, doc = _bench(tmp_path, "--modes", "grpo", "--horizon-chunks", "1", "--repeats", "1")
    assert rc == 0
    assert _rows(doc, "grpo")[0]["horizon_note"].startswith("NOT the horizon")


USER_MODULE = """
import torch
from torch import nn
from wmpo.models.denoiser_adapter import DenoiserWorldModel

class TinyVideoDenoiser(nn.Module):
    def __init__(self, channels=4, actions=7):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        self.act = nn.Linear(actions + 1, channels)

    def forward(self, x, t, a):                       # x [B, T, C, h, w], t [B, T], a [B, T, A]
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return h + self.act(torch.cat([a, t[..., None]], -1))[..., None, None]

def make():
    torch.manual_seed(0)
    return DenoiserWorldModel(TinyVideoDenoiser(), num_context=2, chunk_len=4, action_dim=7, latent_channels=4,
                              latent_size=8)

def make_bare():
    return TinyVideoDenoiser()

def make_wrong_shape():
    return DenoiserWorldModel(lambda x, t, a: x.mean(1), num_context=2, chunk_len=4, action_dim=7, latent_channels=4,
                              latent_size=8)

def make_with_args(size):
    return None
"""


def test_a_users_own_world_model_is_timed_with_model(tmp_path, monkeypatch):
    (tmp_path / "user_wm.py").write_text(textwrap.dedent(USER_MODULE))
    rc, doc = _bench(tmp_path, "--model", f"{tmp_path / 'user_wm.py'}:make", "--steps", "3", "--modes", "imagine,loop")
    assert rc == 0
    assert doc["subjects"]["config"]["world_model_class"] == "DenoiserWorldModel"
    assert {r["mode"] for r in doc["rows"]} == {"imagine_reference", "imagine", "loop"}
    assert all(r["frames_per_sec"]["median"] > 0 for r in doc["rows"])
    monkeypatch.syspath_prepend(str(tmp_path))  # the module:factory form
    rc, doc = _bench(tmp_path, "--model", "user_wm:make", "--modes", "imagine", "--no-reference", "--repeats", "1",
                     name="b.json")
    assert rc == 0 and doc["rows"][0]["frames_per_sec"]["median"] > 0


@pytest.mark.parametrize("factory, message", [
    ("make_bare", "expected a world model .* got TinyVideoDenoiser; wrap a plain denoiser"),
    ("make_wrong_shape", r"denoiser: expected a velocity shaped like x_t \(1, 6, 4, 8, 8\)"),
    ("make_with_args", "a factory takes no arguments"),
    ("no_such_factory", "has no attribute 'no_such_factory'"),
])
def test_a_wrong_factory_is_one_error_line(tmp_path, capsys, factory, message):
    import re

    (tmp_path / "user_wm.py").write_text(textwrap.dedent(USER_MODULE))
    rc, doc = _bench(tmp_path, "--model", f"{tmp_path / 'user_wm.py'}:{factory}")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and doc is None
    assert err[-1].startswith("wmpo bench: error: --model") and re.search(message, err[-1]), err[-1]


def test_bad_flags_are_named(tmp_path, capsys):
    assert wmpo_main(["bench", "--modes", "imagine,fly", "--out", str(tmp_path / "x.json")]) == 2
    assert "--modes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        wmpo_main(["bench", "--steps", "4,zero"])
    assert wmpo_main(["bench", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "--checkpoint: no such folder" in capsys.readouterr().err


def _run_folder(tmp_path):
    """A run folder as `wmpo run` leaves it with distill_wm: VAE, teacher, student, policy, reward model."""
    from wmpo.models.policy import PolicyConfig, VLAPolicy, save_policy
    from wmpo.models.reward import RewardConfig, RewardModel, save_reward
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE, VAEConfig
    from wmpo.models.world_model import WorldModel, WorldModelConfig
    from wmpo.train.distill import student_from_teacher

    torch.manual_seed(0)
    K, A = 4, 7
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(8, 16), layers_per_block=1, norm_groups=4, mid_attention=False))
    wm = WorldModel(WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2, num_context=2,
                                     chunk_len=K, action_dim=A))
    wm.set_action_stats({"q01": -np.ones(A), "q99": np.ones(A)})
    student = student_from_teacher(wm)
    policy = VLAPolicy(PolicyConfig(chunk_len=K, action_dim=A, image_size=32, patch_size=8, hidden_size=32, num_heads=2,
                                    vision_layers=1, instr_layers=1, fusion_layers=1))
    reward = RewardModel(RewardConfig(image_size=32, patch_size=8, tubelet_size=2, hidden_size=32, num_layers=1, num_heads=2,
                                      clip_len=4))
    reward.threshold.fill_(2.0)  # a trained model's verdict is used: here it never fires, so all reach the horizon
    run = tmp_path / "run"
    for d in ("vae", "wm", "distill", "policy", "reward", "stages", "data"):
        (run / d).mkdir(parents=True)
    torch.save(vae.state(), run / "vae" / "vae.pt")
    torch.save(wm.state(), run / "wm" / "world_model.pt")
    torch.save(student.state(), run / "distill" / "student.pt")
    save_policy(run / "policy" / "policy.pt", policy, ActionTokenizer(-np.ones(A), np.ones(A)))
    save_reward(run / "reward" / "reward.pt", reward)
    markers = {"vae": {"path": "vae/vae.pt"}, "wm_finetune": {"path": "wm/world_model.pt"},
               "distill_wm": {"path": "distill/student.pt"}, "policy_sft": {"policy_path": "policy/policy.pt"},
               "reward": {"reward_path": "reward/reward.pt"}}
    for stage, outputs in markers.items():
        key = next(iter(outputs))
        (run / "stages" / f"{stage}.json").write_text(json.dumps({"outputs": outputs, "run_relative": [[key]]}))
    (run / "config.json").write_text(json.dumps({"task": "square", "sampler_steps": 4, "student_steps": 1, "imagined_horizon": 8,
                                                 "rollout": {"group_size": 2}, "grpo": {"temperature": 1.6}}))
    frames = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(run / "data" / "initial_train_4.npz", states=np.zeros((4, 1)), frames=frames)
    return run


def test_a_run_folder_times_teacher_and_student_in_one_run(tmp_path):
    run = _run_folder(tmp_path)
    rc, doc = _bench(tmp_path, "--checkpoint", str(run), "--steps", "8,2,1", "--repeats", "1", "--no-reference",
                     "--modes", "imagine,grpo")
    assert rc == 0
    imagine = [(r["model"], r["steps"]) for r in _rows(doc, "imagine")]
    assert imagine == [("teacher", 8), ("teacher", 2), ("teacher", 1), ("student", 2), ("student", 1)]
    for r in _rows(doc, "imagine"):
        if r["model"] == "student":
            assert r["speedup_vs_teacher"]["teacher_steps"] == 8 and r["speedup_vs_teacher"]["ratio"] > 0
            assert r["fused_few_step_path"] is True
    grpo = _rows(doc, "grpo")
    assert {(r["model"], r["steps"]) for r in grpo} == {("teacher", 8), ("teacher", 2), ("teacher", 1), ("student", 2),
                                                         ("student", 1)}
    assert all(r["reward_model"].startswith("trained") and r["horizon_steps"] == 8 for r in grpo)
    assert doc["subjects"]["initial_frames"].startswith("the run's cached")
    assert doc["subjects"]["config"]["checkpoints"]["student"].endswith("student.pt")


def test_the_cli_silences_robosuites_start_up_messages(tmp_path):
    """`wmpo bench` imports the task registry (robosuite): none of robosuite's start-up lines reach stderr,
    while a plain `import wmpo.sim` outside the CLI still shows them (the filter is the CLI's choice)."""
    import importlib.util
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("WMPO_QUIET_ROBOSUITE", "WMPO_NO_PROGRESS")}
    cli = subprocess.run([sys.executable, "-m", "wmpo.cli", "bench", "--modes", "imagine", "--no-reference", "--repeats", "1",
                          "--chunks", "1", "--batch", "1", "--out", str(tmp_path / "q.json")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "[wmpo bench]" in cli.stderr and "[robosuite" not in cli.stderr, cli.stderr
    if importlib.util.find_spec("robosuite.macros_private") is None:  # robosuite warns about it at import
        plain = subprocess.run([sys.executable, "-c", "import wmpo.sim"], env=env, capture_output=True, text=True, timeout=300)
        assert "No private macro file" in plain.stderr


def test_without_the_simulator_packages_the_task_falls_back_and_says_so(monkeypatch):
    import sys

    from wmpo.bench import subjects

    monkeypatch.setitem(sys.modules, "wmpo.sim.tasks", None)  # as if robosuite / the sim package were missing
    info = subjects._task_spec("square")
    assert info.horizon == subjects.FALLBACK_HORIZON and "not importable" in info.note
    monkeypatch.undo()
    real = subjects._task_spec("square")
    assert real.note == "" and real.instruction != "do the task"


def test_a_simulator_env_under_the_cli_prints_none_of_robosuites_startup_lines():
    """What every `wmpo` command's simulator workers would print per env without WMPO_QUIET_ROBOSUITE:
    the default controller file line and (coffee's robot) its parts for other robots' bodies; with it, none of those."""
    import os
    import subprocess
    import sys

    code = "from wmpo.sim.env import make_env\ne = make_env('coffee', image_size=32)\ne.reset()\ne.close()\n"
    base = {k: v for k, v in os.environ.items() if k != "WMPO_QUIET_ROBOSUITE"}
    base.setdefault("MUJOCO_GL", "egl")
    loud = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=300)
    quiet = subprocess.run([sys.executable, "-c", code], env={**base, "WMPO_QUIET_ROBOSUITE": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr[-2000:] + quiet.stderr[-2000:]
    assert "The config has defined for the controller" in loud.stderr  # what is being silenced exists
    assert "The config has defined for the controller" not in quiet.stderr, quiet.stderr[-2000:]
    assert "Loading controller configuration" not in quiet.stderr
