"""TrajectoryStore: round trip, append/reopen, statistics, errors, concurrent reads, kill -9 safety."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from wmpo.data.episode import Episode
from wmpo.data.store import StaleLockWarning, StoreFormatError, TrajectoryStore

REPO = Path(__file__).resolve().parents[1]


def make_episode(T=5, size=8, seed=0, S=4, success=True):
    rng = np.random.default_rng(seed)
    return Episode(
        frames=rng.integers(0, 256, (T + 1, size, size, 3), dtype=np.uint8),
        actions=rng.uniform(-1, 1, (T, 7)).astype(np.float32),
        states=rng.normal(size=(T + 1, S)),
        rewards=np.r_[np.zeros(T - 1), 1.0].astype(np.float32),
        dones=np.r_[np.zeros(T - 1, bool), True],
        success=success,
        finish_step=T,
        instruction="Insert the square into the stick",
        task="square",
        meta={"seed": seed},
    )


def assert_same(a: Episode, b: Episode):
    for k in ("frames", "actions", "states", "rewards", "dones"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert (a.success, a.finish_step, a.instruction, a.task, a.meta) == (b.success, b.finish_step, b.instruction, b.task, b.meta)


def test_round_trip_append_reopen_and_stats(tmp_path):
    path = tmp_path / "demos.h5"
    eps = [make_episode(T=3 + i, seed=i, success=i % 2 == 0) for i in range(3)]
    with TrajectoryStore(path, "w", env_meta={"env_name": "square"}) as s:
        assert len(s) == 0
        assert s.append(eps[0]) == 0
        assert s.append(eps[1]) == 1
    with TrajectoryStore(path, "a") as s:
        assert len(s) == 2
        assert s.append(eps[2]) == 2
    with TrajectoryStore(path, "r") as s:
        assert len(s) == 3 and s.env_meta == {"env_name": "square"}
        for a, b in zip(eps, s):
            assert_same(a, b)
        assert_same(eps[1], s.load(1))
        st = s.action_stats()
        allact = np.concatenate([e.actions for e in eps])
        np.testing.assert_allclose(st["q01"], np.quantile(allact, 0.01, axis=0), rtol=1e-6)
        np.testing.assert_allclose(st["q99"], np.quantile(allact, 0.99, axis=0), rtol=1e-6)
        assert st["q01"].shape == (7,) and np.all(st["q01"] < st["q99"])
        assert s.episode_lengths() == [3, 4, 5]
        with pytest.raises(IndexError, match="episode index"):
            s.load(3)
        with pytest.raises(ValueError, match="read-only"):
            s.append(eps[0])
    # robomimic layout, readable through the index file with plain h5py
    with h5py.File(path, "r") as f:
        g = f["data/demo_2"]
        assert g["obs/agentview_image"].shape == (6, 8, 8, 3) and g["obs/agentview_image"].dtype == np.uint8
        assert g["actions"].shape == (5, 7) and g["states"].shape == (6, 4)
        assert g.attrs["num_samples"] == 5 and bool(g.attrs["success"]) and g.attrs["finish_step"] == 5
        assert g.attrs["instruction"] == "Insert the square into the stick" and g.attrs["task"] == "square"
        assert f["data"].attrs["total"] == 12
    # "w" starts over
    with TrajectoryStore(path, "w") as s:
        assert len(s) == 0


def test_bad_input_and_foreign_files(tmp_path):
    path = tmp_path / "demos.h5"
    with TrajectoryStore(path, "w") as s:
        ep = make_episode()
        bad = make_episode()
        bad.actions = bad.actions[:, :6]
        with pytest.raises(ValueError, match=r"ep.actions: expected shape \(5, 7\)"):
            s.append(bad)
        bad = make_episode()
        bad.frames = bad.frames.astype(np.float32)
        with pytest.raises(ValueError, match="ep.frames: expected uint8"):
            s.append(bad)
        bad = make_episode()
        bad.states = bad.states[:-1]
        with pytest.raises(ValueError, match="ep.states"):
            s.append(bad)
        s.append(ep)
        assert len(s) == 1  # rejected episodes left no trace
    with pytest.raises(ValueError, match="mode"):
        TrajectoryStore(path, "x")
    with pytest.raises(FileNotFoundError):
        TrajectoryStore(tmp_path / "missing.h5", "r")
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(StoreFormatError, match="not an HDF5 file"):
        TrajectoryStore(text, "r")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data/demo_0/actions"] = np.zeros((3, 7))
    with pytest.raises(StoreFormatError, match="not a wmpo trajectory store"):
        TrajectoryStore(other, "r")
    with pytest.raises(StoreFormatError):
        TrajectoryStore(other, "a")
    # a missing key inside an episode file
    with h5py.File(tmp_path / "demos.h5.episodes" / "demo_0.h5", "a") as f:
        del f["data/demo_0/actions"]
    with TrajectoryStore(path, "r") as s:
        with pytest.raises(KeyError, match="missing key 'data/demo_0/actions'"):
            s.load(0)


def test_reader_sees_appends_of_another_writer(tmp_path):
    path = tmp_path / "demos.h5"
    writer = TrajectoryStore(path, "w")
    writer.append(make_episode(seed=0))
    reader = TrajectoryStore(path, "r")
    assert len(reader) == 1
    writer.append(make_episode(seed=1))
    assert len(reader) == 2
    assert_same(reader.load(1), make_episode(seed=1))
    writer.close()
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        len(reader)


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    import wmpo.data.store as store
    from test_store import make_episode
    stage = sys.argv[2]
    real_fsync = store._fsync_file
    def slow_fsync(path):
        name = os.path.basename(str(path))
        hit = (stage == "episode" and name.startswith("demo_2.h5")) or (stage == "index" and name == "demos.h5.tmp" and os.path.exists(os.path.join(os.path.dirname(str(path)), "demos.h5.episodes", "demo_2.h5")))
        if hit:
            print("STALL", flush=True)
            time.sleep(60)
        real_fsync(path)
    store._fsync_file = slow_fsync
    s = store.TrajectoryStore(sys.argv[1], "a")
    for i in range(5):
        s.append(make_episode(T=20, size=32, seed=i))
    """
)


@pytest.mark.parametrize("stage", ["episode", "index"])
def test_kill_9_mid_append_keeps_earlier_episodes(tmp_path, stage):
    """A writer killed with SIGKILL while writing episode 2 (its file, or the index after it)."""
    path = tmp_path / "demos.h5"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), tests=str(REPO / "tests")))
    proc = subprocess.Popen([sys.executable, str(script), str(path), stage], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STALL", line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # readers see only complete episodes
    with TrajectoryStore(path, "r") as s:
        assert len(s) == 2
        for i in range(2):
            assert_same(s.load(i), make_episode(T=20, size=32, seed=i))
    # the next writer takes over the dead writer's lock (with a warning naming it), removes stray temp
    # files, indexes complete episodes and appends
    with pytest.warns(StaleLockWarning, match=f"pid {proc.pid}"):
        s = TrajectoryStore(path, "a")
    with s:
        n = len(s)
        assert n == (2 if stage == "episode" else 3)
        assert not any(p.name.endswith(".tmp") for p in s.episode_dir.iterdir())
        assert s.append(make_episode(T=4, seed=9)) == n
    with TrajectoryStore(path, "r") as s:
        assert len(s) == n + 1
        for i in range(n):
            assert_same(s.load(i), make_episode(T=20, size=32, seed=i))
        assert_same(s.load(n), make_episode(T=4, seed=9))


def test_lost_index_is_rebuilt_from_episode_files(tmp_path):
    path = tmp_path / "demos.h5"
    with TrajectoryStore(path, "w") as s:
        for i in range(2):
            s.append(make_episode(seed=i))
    path.unlink()
    with TrajectoryStore(path, "a") as s:
        assert len(s) == 2
        assert s.append(make_episode(seed=5)) == 2
    with TrajectoryStore(path, "r") as s:
        assert_same(s.load(1), make_episode(seed=1))
        assert_same(s.load(2), make_episode(seed=5))
        allact = np.concatenate([make_episode(seed=i).actions for i in (0, 1, 5)])
        np.testing.assert_allclose(s.action_stats()["q99"], np.quantile(allact, 0.99, axis=0), rtol=1e-6)
