"""`wmpo import`: robomimic and LeRobot-style HDF5 files into a trajectory store, and its errors."""
import json

import h5py
import numpy as np
import pytest

from wmpo.cli import main
from wmpo.data.store import StoreFormatError, TrajectoryStore

H = 8


def _frames(rng, n):
    return rng.integers(0, 256, (n, H, H, 3), dtype=np.uint8)


def _robomimic_file(path, *, actions_dim=7, float_images=False, drop=None):
    """demo_0: a success (sparse reward 1 at the end), with next_obs and [T, S] states;
    demo_1: a failure without next_obs (its last action has no frame after it)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "NutAssemblySquare", "type": 1, "env_kwargs": {}})
        for i, (T, ok) in enumerate(((4, True), (5, False))):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            obs = _frames(rng, T + 1)
            g["obs/agentview_image"] = obs[:T].astype(np.float32) / 255 if float_images else obs[:T]
            g["obs/robot0_eef_pos"] = rng.normal(size=(T, 3))
            if i == 0:
                g["next_obs/agentview_image"] = obs[1:]
            g["actions"] = rng.uniform(-1, 1, (T, actions_dim))
            g["rewards"] = np.r_[np.zeros(T - 1), float(ok)]
            g["dones"] = np.r_[np.zeros(T - 1), 1].astype(np.int64)
            g["states"] = rng.normal(size=(T, 5))
            if drop and drop in g:
                del g[drop]
    return path


def test_import_robomimic(tmp_path, capsys):
    src = _robomimic_file(tmp_path / "real.hdf5")
    out = tmp_path / "store.h5"
    assert main(["import", "--format", "robomimic", str(src), "--out", str(out), "--instruction", "insert the square"]) == 0
    assert "2 episodes (1 successes" in capsys.readouterr().out
    with h5py.File(src, "r") as f, TrajectoryStore(out) as s:
        assert len(s) == 2
        e0, e1 = s.load(0), s.load(1)
        g = f["data/demo_0"]
        np.testing.assert_array_equal(e0.frames, np.concatenate([g["obs/agentview_image"][()], g["next_obs/agentview_image"][-1:]]))
        np.testing.assert_array_equal(e0.actions, g["actions"][()].astype(np.float32))
        assert e0.success and e0.finish_step == 4 and e0.meta["success_from"] == "last reward"
        assert e0.states.shape == (5, 5) and np.isnan(e0.states[-1]).all()  # the state after the last action is unknown
        np.testing.assert_array_equal(e0.states[:4], g["states"][()])
        assert e0.instruction == "insert the square" and e0.task == "NutAssemblySquare"
        # no next_obs: the last action is dropped (no frame shows its result), and said so
        g1 = f["data/demo_1"]
        assert len(e1) == 4 and not e1.success and e1.finish_step == 4 and "dropped_last_action" in e1.meta
        np.testing.assert_array_equal(e1.frames, g1["obs/agentview_image"][()])
        np.testing.assert_array_equal(e1.states, g1["states"][()])
        # the statistics are exactly the quantiles of the imported actions
        acts = np.concatenate([e0.actions, e1.actions])
        np.testing.assert_allclose(s.action_stats()["q01"], np.quantile(acts, 0.01, axis=0), rtol=1e-6)
        meta = s.env_meta
        assert meta["type"] == "imported" and meta["source"]["env_args"]["env_name"] == "NutAssemblySquare"


@pytest.mark.parametrize("kind, message", [
    ("missing", r"missing key 'data/demo_0/actions'"),
    ("shape", r"data/demo_0/actions: wrong shape: expected \[T, 7\]"),
    ("float", r"data/demo_0/obs/agentview_image: non-image frames: expected uint8"),
    ("no_outcome", r"no success flag and no rewards"),
    ("no_instruction", r"no instruction .* pass --instruction"),
])
def test_import_robomimic_errors(tmp_path, capsys, kind, message):
    src = _robomimic_file(tmp_path / "real.hdf5", actions_dim=6 if kind == "shape" else 7, float_images=kind == "float",
                          drop="actions" if kind == "missing" else None)
    if kind == "no_outcome":
        with h5py.File(src, "a") as f:
            del f["data/demo_0/rewards"]
    out = tmp_path / "store.h5"
    args = ["import", "--format", "robomimic", str(src), "--out", str(out)]
    assert main(args + ([] if kind == "no_instruction" else ["--instruction", "x"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("wmpo import: error:") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not out.exists() and not (tmp_path / "store.h5.episodes").exists()  # nothing half-written


def test_import_robomimic_names_non_image_observations(tmp_path, capsys):
    src = _robomimic_file(tmp_path / "real.hdf5")
    assert main(["import", "--format", "robomimic", str(src), "--out", str(tmp_path / "s.h5"), "--instruction", "x",
                 "--image-key", "robot0_eef_pos"]) == 2
    assert "obs/robot0_eef_pos: non-image frames: expected RGB images [N, H, W, 3], got shape (4, 3)" in capsys.readouterr().err


def _lerobot_file(path, contiguous=True):
    rng = np.random.default_rng(1)
    lengths = (4, 6)
    N = sum(lengths)
    with h5py.File(path, "w") as f:
        f.attrs["task"] = "stack the cubes"
        f["observation.images.top"] = _frames(rng, N)
        f["action"] = rng.uniform(-1, 1, (N, 7)).astype(np.float32)
        idx = np.repeat([0, 1], lengths)
        f["episode_index"] = idx if contiguous else idx[np.r_[0, 5, 1:5, 6:N]]
        f["frame_index"] = np.concatenate([np.arange(n) for n in lengths])
        success = np.zeros(N, bool)
        success[4 + 3] = True  # episode 1 solved after its frame 3
        f["next.success"] = success
        f["next.reward"] = success.astype(np.float32)
        f["observation.state"] = rng.normal(size=(N, 9))
    return path


def test_import_lerobot_hdf5(tmp_path, capsys):
    src = _lerobot_file(tmp_path / "lerobot.h5")
    out = tmp_path / "store.h5"
    assert main(["import", "--format", "lerobot-hdf5", str(src), "--out", str(out)]) == 0
    with h5py.File(src, "r") as f, TrajectoryStore(out) as s:
        assert len(s) == 2
        e0, e1 = s.load(0), s.load(1)
        assert len(e0) == 3 and len(e1) == 5  # L frames -> L-1 steps
        np.testing.assert_array_equal(e1.frames, f["observation.images.top"][4:10])
        np.testing.assert_array_equal(e1.actions, f["action"][4:9])
        np.testing.assert_array_equal(e1.states, f["observation.state"][4:10])
        assert not e0.success and e0.finish_step == 3
        assert e1.success and e1.finish_step == 4 and e1.meta["success_from"] == "success flag"
        assert e1.instruction == "stack the cubes"


def test_import_lerobot_hdf5_errors(tmp_path, capsys):
    src = _lerobot_file(tmp_path / "bad.h5", contiguous=False)
    assert main(["import", "--format", "lerobot-hdf5", str(src), "--out", str(tmp_path / "s.h5")]) == 2
    assert "not contiguous" in capsys.readouterr().err
    src = _lerobot_file(tmp_path / "noact.h5")
    with h5py.File(src, "a") as f:
        del f["action"]
    assert main(["import", "--format", "lerobot-hdf5", str(src), "--out", str(tmp_path / "s.h5")]) == 2
    assert "missing key 'action'" in capsys.readouterr().err
    # a wmpo store is not a LeRobot file, and the output must be new
    good = _lerobot_file(tmp_path / "good.h5")
    assert main(["import", "--format", "lerobot-hdf5", str(good), "--out", str(tmp_path / "s.h5")]) == 0
    assert main(["import", "--format", "lerobot-hdf5", str(good), "--out", str(tmp_path / "s.h5")]) == 2
    assert "exists; import into a new store path" in capsys.readouterr().err


def test_action_stats_are_never_made_up(tmp_path):
    with TrajectoryStore(tmp_path / "empty.h5", "w") as s:
        with pytest.raises(StoreFormatError, match="holds no actions"):
            s.action_stats()
    with TrajectoryStore(tmp_path / "empty.h5") as s:
        with pytest.raises(StoreFormatError, match="no action statistics"):
            s.action_stats()
