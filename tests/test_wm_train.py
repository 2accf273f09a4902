import pytest
import torch

from wmpo.data.clips import LatentWindowDataset, normalize_actions, synthetic_episodes
from wmpo.data.loader import action_stats
from wmpo.models.vae import FrameVAE, VAEConfig
from wmpo.models.world_model import WorldModel, WorldModelConfig
from wmpo.train.wm_eval import evaluate_world_model
from wmpo.train.world_model import WMTrainConfig, WMTrainer, build_dataset, ema_decay_at, train_world_model
from wmpo.utils.checkpoint import load_checkpoint

torch.set_num_threads(1)


def small_setup():
    eps = synthetic_episodes(4, 14, size=32, seed=0)
    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=32, block_channels=(16, 32), layers_per_block=1, norm_groups=8, mid_attention=False)).eval()
    mcfg = WorldModelConfig(latent_size=16, hidden=32, spatial_blocks=1, temporal_blocks=1, heads=2, num_context=2, chunk_len=3)
    return eps, vae, mcfg


def test_windows_alignment_and_start_padding():
    lat = [torch.arange(6).float().view(6, 1, 1, 1).expand(6, 2, 2, 2)]
    act = [torch.arange(1, 6).float().view(5, 1).expand(5, 3)]
    ds = LatentWindowDataset(lat, act, num_context=3, chunk_len=2)
    assert ds.index[0] == (0, -2) and len(ds) == 1 + (6 - 5 + 1)
    x, a = ds.get(0)  # padded start: frames 0,0,0 | 1,2 ; actions 0,0,0 | a0,a1
    assert x[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert a[:, 0].tolist() == [0, 0, 0, 1, 2]
    x, a = ds.get(2)  # s=1: frames 1..5, producing actions a0..a4
    assert x[:, 0, 0, 0].tolist() == [1, 2, 3, 4, 5] and a[:, 0].tolist() == [1, 2, 3, 4, 5]


def test_normalize_actions():
    st = {"q01": [-2.0, 0.0, 1.0], "q99": [2.0, 1.0, 1.0]}
    out = normalize_actions(torch.tensor([[0.0, 2.0, 5.0], [-4.0, 0.5, 1.0]]), st)
    assert out.tolist() == [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="actions"):
        normalize_actions(torch.zeros(2, 4), st)


def test_loss_falls_on_tiny_dataset():
    eps, vae, mcfg = small_setup()
    cfg = WMTrainConfig(model=mcfg, steps=60, batch_size=8, lr=2e-3, grad_clip=1.0, ema_decay=0.0, t_sampling="uniform")
    data = build_dataset(vae, eps, action_stats(eps), mcfg, "cpu")
    tr = WMTrainer(cfg, data, torch.device("cpu"))
    losses = [tr.step() for _ in range(60)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)


def test_checkpoint_resume_gives_same_next_step(tmp_path):
    eps, vae, mcfg = small_setup()
    cfg = WMTrainConfig(model=mcfg, steps=3, batch_size=4, lr=1e-3, ema_decay=0.99, ckpt_every=100)
    r = train_world_model(cfg, None, tmp_path / "a", vae=vae, episodes=eps, device="cpu")
    assert r["step"] == 3 and (tmp_path / "a" / "config.json").is_file()
    # continue A by one step in memory
    data = build_dataset(vae, eps, action_stats(eps), mcfg, "cpu")
    st = load_checkpoint(tmp_path / "a" / "world_model.pt")
    tr1 = WMTrainer(cfg, data, torch.device("cpu"))
    tr1.load(st)
    l1 = tr1.step()
    # resume from the checkpoint through the public function
    cfg.steps = 4
    r2 = train_world_model(cfg, None, tmp_path / "a", vae=vae, episodes=eps, device="cpu")
    assert r2["step"] == 4
    st2 = load_checkpoint(tmp_path / "a" / "world_model.pt")
    assert r2["loss"] == pytest.approx(l1, rel=1e-5)
    for k, v in tr1.model.state_dict().items():
        torch.testing.assert_close(st2["model"]["state_dict"][k], v)
    # fine-tuning from a checkpoint starts from its (EMA) weights
    cfg2 = WMTrainConfig(model=WorldModelConfig(), steps=1, batch_size=2, ema_decay=0.0)
    r3 = train_world_model(cfg2, None, tmp_path / "ft", vae=vae, episodes=eps, device="cpu", init_from=tmp_path / "a" / "world_model.pt")
    assert r3["step"] == 1 and cfg2.model.hidden == mcfg.hidden
    wm = WorldModel.from_checkpoint(tmp_path / "ft" / "world_model.pt")
    assert wm.cfg.hidden == 32


def test_fidelity_eval_outputs(tmp_path):
    eps, vae, mcfg = small_setup()
    wm = WorldModel(mcfg).eval()
    res = evaluate_world_model(vae, wm, eps[:2], action_stats(eps), steps=2, device="cpu", video_dir=tmp_path)
    assert len(res["psnr"]) == len(res["ssim"]) == 12  # 4 chunks x 3 frames
    assert all(torch.isfinite(torch.tensor(res["psnr"]))) and -1 <= res["ssim_mean"] <= 1
    assert len(res["videos"]) == 2 and all((tmp_path / f"episode_{i:03d}.mp4").stat().st_size > 0 for i in range(2))


def test_checkpoint_keeps_action_stats_and_finetuning_reuses_them(tmp_path):
    import json

    import numpy as np

    from wmpo.data.loader import same_action_stats
    from wmpo.utils.checkpoint import save_checkpoint

    eps, vae, mcfg = small_setup()
    st = action_stats(eps)
    r = train_world_model(WMTrainConfig(model=mcfg, steps=1, batch_size=2, ema_decay=0.0), None, tmp_path / "pre",
                          vae=vae, episodes=eps, device="cpu")
    assert r["action_stats_from"] == "data"
    pre = tmp_path / "pre" / "world_model.pt"
    wm = WorldModel.from_checkpoint(pre)
    np.testing.assert_array_equal(wm.action_stats["q01"], st["q01"])
    np.testing.assert_array_equal(wm.action_stats["q99"], st["q99"])
    # fine-tuning data with other statistics: the checkpoint's are kept (not recomputed from the new data)
    other = synthetic_episodes(4, 14, size=32, seed=1)
    for e in other:
        e.actions = e.actions * 3.0 + 0.5
    assert not same_action_stats(action_stats(other), st)
    r = train_world_model(WMTrainConfig(model=WorldModelConfig(), steps=1, batch_size=2, ema_decay=0.0), None,
                          tmp_path / "ft", vae=vae, episodes=other, device="cpu", init_from=pre)
    assert r["action_stats_from"] == "init_from"
    assert same_action_stats(WorldModel.from_checkpoint(tmp_path / "ft" / "world_model.pt").action_stats, st)
    assert same_action_stats(json.loads((tmp_path / "ft" / "action_stats.json").read_text()), st)
    with pytest.raises(ValueError, match="action_stats: expected the statistics of init_from"):
        train_world_model(WMTrainConfig(model=WorldModelConfig(), steps=1, batch_size=2, ema_decay=0.0), None,
                          tmp_path / "ft2", vae=vae, episodes=other, action_stats=action_stats(other), device="cpu",
                          init_from=pre)
    # a checkpoint from before the stats were saved in it: action_stats.json beside it, else a clear error
    old = load_checkpoint(pre)
    del old["model"]["action_stats"]
    save_checkpoint(tmp_path / "old" / "world_model.pt", old)
    assert WorldModel.from_checkpoint(tmp_path / "old" / "world_model.pt").action_stats is None
    with pytest.raises(ValueError, match="holds no action statistics"):
        train_world_model(WMTrainConfig(model=WorldModelConfig(), steps=1, batch_size=2, ema_decay=0.0), None,
                          tmp_path / "ft3", vae=vae, episodes=other, device="cpu", init_from=tmp_path / "old" / "world_model.pt")
    (tmp_path / "old" / "action_stats.json").write_text((tmp_path / "pre" / "action_stats.json").read_text())
    with pytest.warns(RuntimeWarning, match="action_stats.json"):
        legacy = WorldModel.from_checkpoint(tmp_path / "old" / "world_model.pt")
    assert same_action_stats(legacy.action_stats, st)


def test_fidelity_eval_uses_the_world_models_own_stats(tmp_path):
    import json

    import numpy as np

    from wmpo.cli.train import wm_eval_main
    from wmpo.data.episode import Episode
    from wmpo.data.loader import same_action_stats
    from wmpo.data.store import TrajectoryStore
    from wmpo.utils.checkpoint import save_checkpoint

    eps, vae, mcfg = small_setup()
    wm = WorldModel(mcfg).eval()
    with torch.no_grad():  # the zero-initialized modulation ignores actions; let them matter
        for layer in (wm.modulation, wm.final):
            layer.weight.normal_(0.0, 0.2)
    with pytest.raises(ValueError, match="action_stats: the world model has none"):
        evaluate_world_model(vae, wm, eps[:2], steps=1, device="cpu")
    st = action_stats(eps)
    wm.set_action_stats(st)
    own = evaluate_world_model(vae, wm, eps[:2], steps=1, device="cpu")
    assert own["psnr"] == evaluate_world_model(vae, wm, eps[:2], st, steps=1, device="cpu")["psnr"]
    shifted = {"q01": st["q01"] - 1.0, "q99": st["q99"]}
    with pytest.raises(ValueError, match="world model's own"):
        evaluate_world_model(vae, wm, eps[:2], shifted, steps=1, device="cpu")
    # the CLI evaluates with the checkpoint's statistics, not those of the evaluated store
    held_out = [Episode(frames=e.frames, actions=e.actions * 0.5, states=e.states, rewards=e.rewards, dones=e.dones,
                        success=False, finish_step=len(e), instruction=e.instruction, task=e.task) for e in eps[:2]]
    with TrajectoryStore(tmp_path / "held_out.h5", "w") as store:
        for e in held_out:
            store.append(e)
        assert not np.array_equal(store.action_stats()["q99"], st["q99"])
    save_checkpoint(tmp_path / "wm.pt", wm.state())
    save_checkpoint(tmp_path / "vae.pt", vae.state())
    assert wm_eval_main(["--store", str(tmp_path / "held_out.h5"), "--vae", str(tmp_path / "vae.pt"), "--world-model",
                         str(tmp_path / "wm.pt"), "--out", str(tmp_path / "eval"), "--steps", "1", "--device", "cpu"]) == 0
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    loaded = WorldModel.from_checkpoint(tmp_path / "wm.pt").eval()
    assert same_action_stats(loaded.action_stats, st)
    want = evaluate_world_model(vae, loaded, held_out, steps=1, device="cpu")
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-6)
    # with the store's own statistics (what wm-eval did before) the action inputs, hence the frames, differ
    loaded.set_action_stats(TrajectoryStore(tmp_path / "held_out.h5").action_stats())
    assert evaluate_world_model(vae, loaded, held_out, steps=1, device="cpu")["psnr"] != pytest.approx(want["psnr"], abs=1e-6)
    wm.set_action_stats(None)
    save_checkpoint(tmp_path / "bare.pt", wm.state())
    assert wm_eval_main(["--store", str(tmp_path / "held_out.h5"), "--vae", str(tmp_path / "vae.pt"), "--world-model",
                         str(tmp_path / "bare.pt"), "--out", str(tmp_path / "eval2"), "--steps", "1", "--device", "cpu"]) == 2


def test_ema_warmup_tracks_a_short_run():
    cfg = WMTrainConfig(model=WorldModelConfig(), ema_decay=0.99, ema_warmup=True)
    assert [round(ema_decay_at(n, cfg), 4) for n in (0, 1, 90, 10_000)] == [0.1, 0.1818, 0.91, 0.99]
    assert ema_decay_at(0, WMTrainConfig(model=WorldModelConfig(), ema_decay=0.99)) == 0.99  # off: as before
    eps, vae, mcfg = small_setup()
    data = build_dataset(vae, eps, action_stats(eps), mcfg, "cpu")

    def init_share(warmup: bool) -> float:
        """the share of the initial weights left in the EMA after 20 updates (one parameter, measured)"""
        torch.manual_seed(0)
        tr = WMTrainer(WMTrainConfig(model=mcfg, batch_size=2, lr=1e-3, ema_decay=0.99, ema_warmup=warmup), data, torch.device("cpu"))
        p0 = next(tr.model.parameters()).detach().clone()
        trajectory = [p0]
        for _ in range(20):
            tr.step()
            trajectory.append(next(tr.model.parameters()).detach().clone())
        # the EMA is a weighted mean of the trajectory: solve for the weight on p0 along the largest move
        e, last = next(tr.ema.parameters()), trajectory[-1]
        i = (last - p0).abs().argmax()
        return float((e.flatten()[i] - last.flatten()[i]) / (p0.flatten()[i] - last.flatten()[i]))

    off, on = init_share(False), init_share(True)
    assert off > 0.8 and on < 0.2, (off, on)  # measured 0.90 and 0.08
