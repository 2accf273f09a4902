"""The trajectory store as a robomimic dataset: next_obs, mask/ kept on append, links resolved only
next to the index, single-file exports; robomimic's own SequenceDataset reading a collected store
(skipped where robomimic 0.3.0 is not installed: its egl_probe dependency does not build everywhere,
see docs/data.md)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from wmpo.data.episode import Episode
from wmpo.data.export import export_single_file
from wmpo.data.store import CorruptEpisodeError, StoreFormatError, TrajectoryStore

ROOT = Path(__file__).resolve().parents[1]


def _episode(T, seed):
    r = np.random.default_rng(seed)
    return Episode(frames=r.integers(0, 256, (T + 1, 8, 8, 3), dtype=np.uint8), actions=r.normal(size=(T, 7)).astype(np.float32),
                   states=r.normal(size=(T + 1, 4)), rewards=np.r_[np.zeros(T - 1), 1].astype(np.float32),
                   dones=np.r_[np.zeros(T - 1), 1].astype(bool), success=True, finish_step=T, instruction="x", task="square",
                   meta={"seed": seed})


def _store(path, n=3, seed=0):
    with TrajectoryStore(path, "w") as s:
        for i in range(n):
            s.append(_episode(4 + i, seed + i))
    return path


def _same(a, b):
    for k in ("frames", "actions", "states", "rewards", "dones"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert (a.success, a.finish_step, a.meta) == (b.success, b.finish_step, b.meta)


def test_next_obs_is_a_zero_copy_view_of_the_frames(tmp_path):
    path = _store(tmp_path / "demos.h5")
    with h5py.File(path, "r") as f:
        g = f["data/demo_1"]
        nxt = g["next_obs/agentview_image"]
        assert nxt.is_virtual and nxt.shape == (5, 8, 8, 3)  # T = 5 of the 6 frames
        np.testing.assert_array_equal(nxt[()], g["obs/agentview_image"][1:])
    ep_file = tmp_path / "demos.h5.episodes" / "demo_1.h5"
    with h5py.File(ep_file, "r") as f:  # the frames are stored once
        assert f["data/demo_1/next_obs/agentview_image"].virtual_sources()[0].file_name == "."


def test_append_keeps_robomimic_masks(tmp_path):
    path = _store(tmp_path / "demos.h5")
    with h5py.File(path, "a") as f:  # as robomimic's split_train_val.py writes them
        f["mask/train"] = np.array(["demo_0", "demo_1"], dtype="S")
        f["mask/valid"] = np.array(["demo_2"], dtype="S")
    with TrajectoryStore(path, "a") as s:
        s.append(_episode(3, 9))
    with h5py.File(path, "r") as f:
        assert [x.decode() for x in f["mask/train"][()]] == ["demo_0", "demo_1"]
        assert [x.decode() for x in f["mask/valid"][()]] == ["demo_2"] and len(f["data"]) == 4


def test_index_copied_elsewhere_fails_instead_of_reading_another_store(tmp_path, monkeypatch):
    a = _store(tmp_path / "a" / "demos.h5", seed=0)
    b = _store(tmp_path / "b" / "demos.h5", seed=100)
    (tmp_path / "c").mkdir()
    copy = Path(shutil.copy(a, tmp_path / "c" / "demos.h5"))
    monkeypatch.chdir(b.parent)  # HDF5 falls back to the current folder, which holds b's episodes
    with pytest.raises(StoreFormatError, match=r"episode folder .*c/demos\.h5\.episodes is missing.*--single-file"):
        TrajectoryStore(copy)
    with h5py.File(copy, "r") as f:  # plain h5py / robomimic: an error, not b's data
        with pytest.raises(KeyError):
            f["data/demo_0/actions"][()]
    # another store's episode folder put next to the index is refused by the store, naming it
    shutil.copytree(b.parent / "demos.h5.episodes", tmp_path / "c" / "demos.h5.episodes")
    with TrajectoryStore(copy) as s:
        with pytest.raises(CorruptEpisodeError, match="episode file of another trajectory store"):
            s.load(0)
    # a store copied whole still reads, from anywhere
    shutil.copytree(a.parent, tmp_path / "a2")
    with TrajectoryStore(tmp_path / "a2" / "demos.h5") as s, h5py.File(tmp_path / "a2" / "demos.h5", "r") as f:
        _same(s.load(2), _episode(6, 2))
        np.testing.assert_array_equal(f["data/demo_2/actions"][()], _episode(6, 2).actions)


def test_export_single_file_is_self_contained(tmp_path):
    path = _store(tmp_path / "demos.h5")
    with h5py.File(path, "a") as f:
        f["mask/train"] = np.array(["demo_0"], dtype="S")
    (tmp_path / "out").mkdir()
    r = export_single_file(path, tmp_path / "out" / "one.hdf5")
    assert r["episodes"] == 3 and r["actions"] == 4 + 5 + 6
    moved = Path(shutil.move(tmp_path / "out" / "one.hdf5", tmp_path / "elsewhere.hdf5"))
    shutil.rmtree(tmp_path / "demos.h5.episodes")  # nothing of the store is needed any more
    with TrajectoryStore(moved) as s:
        assert len(s) == 3
        for i in range(3):
            _same(s.load(i), _episode(4 + i, i))
        assert s.action_stats()["q01"].shape == (7,)
    with h5py.File(moved, "r") as f:
        assert not any(isinstance(f["data"].get(k, getlink=True), h5py.ExternalLink) for k in f["data"])
        np.testing.assert_array_equal(f["data/demo_0/next_obs/agentview_image"][()], _episode(4, 0).frames[1:])
        assert [x.decode() for x in f["mask/train"][()]] == ["demo_0"]
    with pytest.raises(StoreFormatError, match="read-only"):
        TrajectoryStore(moved, "a")
    # and back in: the export is a robomimic file that `wmpo import` reads episode for episode
    from wmpo.cli import main

    assert main(["import", "--format", "robomimic", str(moved), "--out", str(tmp_path / "back.h5")]) == 0
    with TrajectoryStore(tmp_path / "back.h5") as s:
        for i in range(3):
            e, want = s.load(i), _episode(4 + i, i)
            for k in ("frames", "actions", "states", "rewards", "dones"):
                np.testing.assert_array_equal(getattr(e, k), getattr(want, k))
            assert (e.success, e.finish_step, e.instruction, e.meta["success_from"]) == (True, 4 + i, "x", "success flag")


def test_stores_written_before_version_2_still_read_and_append(tmp_path):
    path = _store(tmp_path / "demos.h5", n=2)
    for i in range(2):  # back to the version-1 layout: no next_obs, no store id
        with h5py.File(tmp_path / "demos.h5.episodes" / f"demo_{i}.h5", "a") as f:
            del f[f"data/demo_{i}/next_obs"], f["stores"]
            del f.attrs["store_id"]
    with h5py.File(path, "a") as f:
        del f.attrs["store_id"]
        for i in range(2):
            del f[f"data/demo_{i}"]
            f[f"data/demo_{i}"] = h5py.ExternalLink(f"demos.h5.episodes/demo_{i}.h5", f"/data/demo_{i}")
    with TrajectoryStore(path, "a") as s:
        s.append(_episode(3, 7))
    with TrajectoryStore(path) as s, h5py.File(path, "r") as f:
        assert len(s) == 3
        _same(s.load(0), _episode(4, 0))
        _same(s.load(2), _episode(3, 7))
        assert f["data"].get("demo_0", getlink=True).path == "/data/demo_0"
        assert f["data"].get("demo_2", getlink=True).path == f"/stores/{s.store_id}/demo_2"
        sid = s.store_id
    path.unlink()  # a lost index is rebuilt from the mixed episode files, keeping their store id
    with TrajectoryStore(path, "a") as s:
        assert len(s) == 3 and s.store_id == sid
        _same(s.load(2), _episode(3, 7))


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A store made by `wmpo collect` (micro sizes)."""
    pytest.importorskip("robomimic")
    out = tmp_path_factory.mktemp("collect") / "demos.h5"
    env = {**os.environ, "WMPO_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT), "MUJOCO_GL": "egl"}
    p = subprocess.run([sys.executable, "-m", "wmpo.cli", "collect", "--task", "square", "--policy", "expert", "--episodes", "2",
                        "--image-size", "16", "--max-steps", "6", "--out", str(out)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


@pytest.mark.robomimic
@pytest.mark.parametrize("cache", [None, "all"])
def test_robomimic_sequence_dataset_reads_a_collected_store(collected, cache, tmp_path):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    with TrajectoryStore(collected) as s:
        eps = list(s)
        assert s.env_meta["type"] == "wmpo" and s.env_meta["env_kwargs"]["task"] == "square"
    with h5py.File(collected, "a") as f:  # robomimic's split_train_val writes these (its script needs torchvision)
        for key, names in (("train", ["demo_1"]), ("valid", ["demo_0"])):
            if f"mask/{key}" in f:
                del f[f"mask/{key}"]
            f[f"mask/{key}"] = np.array(names, dtype="S")
    with TrajectoryStore(collected, "a"):  # collect's append mode: the split survives
        pass
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"rgb": ["agentview_image"], "low_dim": []}})
    for path, filt in ((collected, None), (collected, "train"), (export_single_file(collected, tmp_path / "one.hdf5")["path"], None)):
        ds = SequenceDataset(str(path), obs_keys=("agentview_image",), dataset_keys=("actions", "rewards", "dones"),
                             hdf5_cache_mode=cache, filter_by_attribute=filt)
        want = [e for e, name in zip(eps, [f"demo_{i}" for i in range(len(eps))]) if filt is None or name in ds.demos]
        assert len(ds) == sum(len(e) for e in want) and len(want) == (1 if filt else 2)
        i = 0
        for e in want:
            for t in range(len(e)):
                x = ds[i]
                np.testing.assert_array_equal(x["obs"]["agentview_image"][0], e.frames[t])
                np.testing.assert_array_equal(x["next_obs"]["agentview_image"][0], e.frames[t + 1])
                np.testing.assert_array_equal(x["actions"][0], e.actions[t])
                i += 1
        ds.close_and_delete_hdf5_handle()
