"""A run that outlives its machine: regenerable data stages, live stages, the stage history, slim
world-model checkpoints, and experiments/persist.py (save the small part of a run, restore it)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wmpo.data.clips import synthetic_episodes
from wmpo.models.vae import FrameVAE, VAEConfig
from wmpo.models.world_model import WorldModelConfig
from wmpo.pipeline.stages import Stage, StageRunner
from wmpo.train.world_model import WMTrainConfig, WMTrainer, build_dataset, train_world_model
from wmpo.data.loader import action_stats
from wmpo.utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _Ctx:
    def __init__(self, runner):
        self.runner = runner

    def output(self, name):
        return self.runner.output(name, self)


def _stages(out: Path, calls: list, live: bool = False):
    def data(ctx):
        calls.append("data")
        p = out / "data" / "store.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"episodes {len(calls)}")
        return {"store": str(p), "episodes": 3}

    def train(ctx):
        calls.append("train")
        store = ctx.output("data")["store"]
        (out / "model.pt").write_text("weights from " + Path(store).read_text())
        return {"path": str(out / "model.pt")}

    def evaluate(ctx):
        calls.append("eval")
        return {"model": ctx.output("train")["path"]}

    return [Stage("data", data, regenerable=True, live=live), Stage("train", train), Stage("eval", evaluate)]


def test_gone_data_is_regenerated_only_when_a_later_stage_needs_it(tmp_path):
    calls: list = []
    r = StageRunner(tmp_path, log=lambda s: None)
    r.run(_stages(tmp_path, calls)[:2], _Ctx(r))
    assert calls == ["data", "train"]
    (tmp_path / "data" / "store.h5").unlink()  # the run folder kept without its data (another machine)
    # only evaluation left: the data is not re-collected
    r2 = StageRunner(tmp_path, log=lambda s: None)
    out = r2.run(_stages(tmp_path, calls), _Ctx(r2))
    assert calls == ["data", "train", "eval"] and out["eval"]["model"] == str(tmp_path / "model.pt")
    assert not (tmp_path / "data" / "store.h5").exists()
    # a later stage that reads the data: regenerated first, then the stage runs
    (tmp_path / "stages" / "train.json").unlink()
    r3 = StageRunner(tmp_path, log=lambda s: None)
    r3.run(_stages(tmp_path, calls), _Ctx(r3))
    assert calls[3:] == ["train", "data"]  # train asked for the data: regenerated then; eval was done
    assert (tmp_path / "model.pt").read_text() == "weights from episodes 5"
    assert (tmp_path / "data" / "store.h5").is_file()
    hist = [json.loads(x) for x in (tmp_path / "stages" / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in hist].count("data") == 2
    assert [h["regenerated"] for h in hist if h["stage"] == "data"] == [False, True]
    assert set(r3.history_seconds()) == {"data", "train", "eval"}


def test_a_marker_written_before_files_were_recorded_still_finds_its_data_gone(tmp_path):
    calls: list = []
    r = StageRunner(tmp_path, log=lambda s: None)
    r.run(_stages(tmp_path, calls)[:1], _Ctx(r))
    m = json.loads((tmp_path / "stages" / "data.json").read_text())
    del m["files"]  # as an older wmpo wrote it
    (tmp_path / "stages" / "data.json").write_text(json.dumps(m))
    (tmp_path / "data" / "store.h5").unlink()
    r2 = StageRunner(tmp_path, log=lambda s: None)
    r2.run(_stages(tmp_path, calls)[:2], _Ctx(r2))
    assert calls == ["data", "train", "data"] and (tmp_path / "data" / "store.h5").is_file()


def test_a_stage_that_is_not_regenerable_keeps_its_marker_when_files_are_gone(tmp_path):
    calls: list = []
    r = StageRunner(tmp_path, log=lambda s: None)
    r.run(_stages(tmp_path, calls)[:2], _Ctx(r))
    (tmp_path / "model.pt").unlink()
    r2 = StageRunner(tmp_path, log=lambda s: None)
    r2.run(_stages(tmp_path, calls)[:2], _Ctx(r2))
    assert calls == ["data", "train"]  # a training stage is never silently redone


def test_live_stage_runs_every_time(tmp_path):
    calls: list = []
    for _ in range(2):
        r = StageRunner(tmp_path, log=lambda s: None)
        r.run(_stages(tmp_path, calls, live=True)[:1], _Ctx(r))
    assert calls == ["data", "data"]


def test_world_model_resumes_from_a_checkpoint_without_optimizer_state(tmp_path):
    eps = synthetic_episodes(4, 14, size=32, seed=0)
    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(16, 32), layers_per_block=1, norm_groups=8, mid_attention=False)).eval()
    mcfg = WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2, num_context=2, chunk_len=3)
    cfg = WMTrainConfig(model=mcfg, steps=2, batch_size=4, lr=1e-3, ema_decay=0.99, ckpt_every=100)
    train_world_model(cfg, None, tmp_path / "a", vae=vae, episodes=eps, device="cpu")
    st = load_checkpoint(tmp_path / "a" / "world_model.pt")
    st["optim"] = None
    data = build_dataset(vae, eps, action_stats(eps), mcfg, "cpu")
    tr = WMTrainer(cfg, data, torch.device("cpu"))
    with pytest.warns(UserWarning, match="no optimizer state"):
        tr.load(st)
    assert tr.step_count == 2 and tr.rewarm_from == 2
    for k, v in st["model"]["state_dict"].items():
        torch.testing.assert_close(tr.model.state_dict()[k], v)
    tr.step()
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * 1 / WMTrainer.REWARM_STEPS, rel=0.05)


def test_persist_saves_the_small_part_and_restores_it(tmp_path):
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "stages" / "demos.json").write_text("{}")
    (run / "data" / "demos.h5.episodes").mkdir(parents=True)
    (run / "data" / "demos.h5").write_bytes(b"x" * 100)
    (run / "data" / "demos.h5.episodes" / "demo_0.h5").write_bytes(b"x" * 100)
    (run / "wm").mkdir()
    big = {"model": {"w": torch.zeros(300_000)}, "optim": {"m": torch.zeros(600_000)}, "step": 7}
    torch.save(big, run / "wm" / "world_model.pt")
    torch.save({"model": {"w": torch.ones(10)}, "optim": {"m": torch.ones(10)}}, run / "wm" / "small.pt")
    dest = tmp_path / "saved"
    cmd = [sys.executable, str(ROOT / "experiments" / "persist.py")]
    res = subprocess.run(cmd + ["save", str(run), str(dest), "--slim-mb", "1"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not (dest / "data").exists()
    assert (dest / "stages" / "demos.json").is_file()
    slim = torch.load(dest / "wm" / "world_model.pt", weights_only=False)
    assert slim["optim"] is None and slim["step"] == 7 and slim["model"]["w"].numel() == 300_000
    assert torch.load(dest / "wm" / "small.pt", weights_only=False)["optim"] is not None  # small: copied as is
    res = subprocess.run(cmd + ["save", str(run), str(tmp_path / "capped"), "--max-mb", "0.5"], capture_output=True, text=True)
    assert res.returncode == 2 and "--max-mb" in res.stderr
    assert (tmp_path / "capped" / "wm" / "world_model.pt").is_file()  # over the cap: copied all the same, nothing lost
    fresh = tmp_path / "fresh"
    res = subprocess.run(cmd + ["restore", str(dest), str(fresh)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (fresh / "config.json").is_file() and (fresh / "wm" / "world_model.pt").is_file()
    res = subprocess.run(cmd + ["restore", str(tmp_path / "nothing"), str(fresh)], capture_output=True, text=True)
    assert res.returncode != 0 and "not a saved run" in res.stderr


def test_cli_corpus_as_is_needs_a_corpus_and_seed_base_is_checked(tmp_path):
    res = subprocess.run([sys.executable, "-m", "wmpo", "run", "--task", "square", "--preset", "micro", "--out", str(tmp_path / "r"),
                          "--corpus-as-is"], capture_output=True, text=True)
    assert res.returncode == 2 and "--corpus-as-is" in res.stderr
    res = subprocess.run([sys.executable, "-m", "wmpo", "corpus", "--out", str(tmp_path / "c"), "--seed-base", "5"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--seed-base" in res.stderr
