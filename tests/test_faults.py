"""Faults and bad input (issue 12): concurrent writers, damaged episodes, a lost episode folder,
resumed collections, moved / copied run folders, and bad input to every command (one `error:` line
naming the file or field, exit 2, nothing written)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fault_cases import _episode, cases, check_error_output, fill, make_fixtures
from wmpo.data.store import CorruptEpisodeError, LockedError, StaleLockWarning, StoreFormatError, TrajectoryStore

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# bad input to every command


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("faults"))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("case", cases(_cuda()), ids=lambda c: c.id)
def test_bad_input_ends_in_one_error_line(case, fx, capsys, monkeypatch):
    from wmpo.cli import main

    if case.needs and case.needs not in fx:
        pytest.skip(f"no {case.needs} fixture on this machine")
    monkeypatch.delenv("WMPO_DEBUG", raising=False)
    try:
        rc = main(fill(case.argv, fx))
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    problem = check_error_output(err, case.mention.format(**fx))
    assert problem is None, f"{problem}\n{err}"
    for key in case.not_created:
        assert not Path(fx[key]).exists(), f"{fx[key]} was written"


# ---------------------------------------------------------------------------------------------
# single writer

HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from wmpo.data.store import TrajectoryStore
    s = TrajectoryStore(sys.argv[1], "a")
    print("HOLDING", flush=True)
    time.sleep(120)
    """
)


def _holder(tmp_path, path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HOLDING"
    return proc


def test_second_writer_is_refused_naming_lock_and_owner(tmp_path):
    path = tmp_path / "demos.h5"
    with TrajectoryStore(path, "w") as s:
        s.append(_episode(4, 0))
    proc = _holder(tmp_path, path)
    try:
        for mode in ("a", "w"):
            with pytest.raises(LockedError, match=rf"demos\.h5\.lock: pid {proc.pid} on host"):
                TrajectoryStore(path, mode)
        # readers take no lock; the refused "w" deleted nothing
        with TrajectoryStore(path, "r") as s:
            assert len(s) == 1
    finally:
        proc.kill()
        proc.wait()
    # once the owner is gone (killed: its lock file stays behind), the next writer takes over
    assert (tmp_path / "demos.h5.lock").exists()
    with pytest.warns(StaleLockWarning, match=rf"pid {proc.pid}"):
        s = TrajectoryStore(path, "a")
    with s:
        assert s.append(_episode(4, 1)) == 1
    assert not (tmp_path / "demos.h5.lock").exists()  # released on close


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    path = tmp_path / "demos.h5"
    with TrajectoryStore(path, "a"):
        with pytest.raises(LockedError, match="already open for writing in this process"):
            TrajectoryStore(path, "a")
    with TrajectoryStore(path, "a") as s:  # released
        s.append(_episode(3, 0))


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    path = tmp_path / "demos.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "demos.h5.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "then"}))
    with pytest.warns(StaleLockWarning, match=rf"stale lock file .*pid {dead.pid}"):
        s = TrajectoryStore(path, "a")
    s.append(_episode(3, 0))
    s.close()
    with TrajectoryStore(path) as r:
        assert len(r) == 1


def test_two_writers_racing_lose_nothing(tmp_path):
    """Several processes append to one store at once, each retrying while another holds it: every
    episode arrives exactly once."""
    path = tmp_path / "demos.h5"
    script = tmp_path / "racer.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        from wmpo.data.store import LockedError, TrajectoryStore
        from fault_cases import _episode
        who = int(sys.argv[2])
        for k in range(3):
            while True:
                try:
                    s = TrajectoryStore(sys.argv[1], "a")
                    break
                except LockedError:
                    time.sleep(0.01)
            with s:
                s.append(_episode(3, 100 * who + k))
    """))
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(w)]) for w in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    with TrajectoryStore(path) as s:
        seeds = sorted(s.stored_seeds())
    assert seeds == sorted(100 * w + k for w in range(3) for k in range(3))


# ---------------------------------------------------------------------------------------------
# checksums


def _flip(path: Path, offset_from_end: int | None = None, at: int | None = None) -> None:
    raw = bytearray(path.read_bytes())
    i = at if at is not None else len(raw) - offset_from_end
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _dataset_offset(path: Path, key: str) -> int:
    with h5py.File(path, "r") as f:
        return f[key].id.get_offset()


def _store(tmp_path, n=3, T=6):
    path = tmp_path / "demos.h5"
    with TrajectoryStore(path, "w") as s:
        for i in range(n):
            s.append(_episode(T, i))
    return path


@pytest.mark.parametrize("key", ["actions", "states", "rewards"])
def test_flipped_bytes_in_a_dataset_are_caught_naming_the_file(tmp_path, key):
    path = _store(tmp_path)
    ep_file = tmp_path / "demos.h5.episodes" / "demo_1.h5"
    _flip(ep_file, at=_dataset_offset(ep_file, f"data/demo_1/{key}") + 3)
    with TrajectoryStore(path) as s:
        s.load(0)
        with pytest.raises(CorruptEpisodeError, match=rf"demo_1\.h5: checksum mismatch in dataset '{key}'") as e:
            s.load(1)
        assert e.value.path == ep_file
        s.load(2)
    with pytest.warns(UserWarning, match=r"1 damaged episode\(s\) skipped: .*demo_1\.h5"):
        s = TrajectoryStore(path, "r", on_corrupt="skip")
    with s:
        assert len(s) == 2 and s.skipped == [str(ep_file)]
        assert [ep.meta["seed"] for ep in s] == [0, 2]


def test_flipped_success_flag_is_caught(tmp_path):
    path = _store(tmp_path)
    ep_file = tmp_path / "demos.h5.episodes" / "demo_0.h5"
    with h5py.File(ep_file, "a") as f:  # a bit flip that lands in an attribute
        f["data/demo_0"].attrs["success"] = not bool(f["data/demo_0"].attrs["success"])
    with TrajectoryStore(path) as s:
        with pytest.raises(CorruptEpisodeError, match="checksum mismatch in attributes"):
            s.load(0)


def test_damaged_compressed_frames_and_truncated_files_name_the_file(tmp_path):
    path = _store(tmp_path)
    ep0 = tmp_path / "demos.h5.episodes" / "demo_0.h5"
    ep2 = tmp_path / "demos.h5.episodes" / "demo_2.h5"
    with h5py.File(ep0, "r") as f:
        info = f["data/demo_0/obs/agentview_image"].id.get_chunk_info(2)
    _flip(ep0, at=info.byte_offset + info.size // 2)  # inside a gzip chunk
    ep2.write_bytes(ep2.read_bytes()[:1000])  # truncated
    with TrajectoryStore(path) as s:
        with pytest.raises(CorruptEpisodeError, match=r"demo_0\.h5"):
            s.load(0)
        s.load(1)
        with pytest.raises(CorruptEpisodeError, match=r"demo_2\.h5: unreadable episode file"):
            s.load(2)
    with pytest.warns(UserWarning, match="2 damaged"):
        s = TrajectoryStore(path, "r", on_corrupt="skip")
    assert len(s) == 1 and s.load(0).meta["seed"] == 1
    # a writer refuses (its statistics would include garbage) unless told to skip, naming the file
    with pytest.raises(CorruptEpisodeError, match=r"demo_2\.h5: unreadable.*cannot append"):
        TrajectoryStore(path, "a")
    with pytest.warns(UserWarning, match="left out of the action statistics"):
        w = TrajectoryStore(path, "a", on_corrupt="skip")
    with w:  # demo_0's actions pass their checksum (its frames are damaged); demo_2 is unreadable
        allact = np.concatenate([_episode(6, 0).actions, _episode(6, 1).actions])
        np.testing.assert_allclose(w.action_stats()["q99"], np.quantile(allact, 0.99, axis=0), rtol=1e-6)


def test_episodes_without_checksums_still_load(tmp_path):
    """Stores written before checksums existed: no checksum, not verified."""
    path = _store(tmp_path, n=2)
    for i in range(2):
        with h5py.File(tmp_path / "demos.h5.episodes" / f"demo_{i}.h5", "a") as f:
            del f[f"data/demo_{i}"].attrs["checksums"]
    with TrajectoryStore(path) as s:
        np.testing.assert_array_equal(s.load(1).actions, _episode(6, 1).actions)
    with TrajectoryStore(path, "a") as s:
        s.append(_episode(6, 5))
    with TrajectoryStore(path, "r", on_corrupt="skip") as s:
        assert len(s) == 3 and s.skipped == []


def test_damaged_index_statistics_are_caught(tmp_path):
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        f["action_stats/q99"][0] = 123.0
    with TrajectoryStore(path) as s:
        with pytest.raises(StoreFormatError, match="action statistics fail their checksum"):
            s.action_stats()
    with TrajectoryStore(path, "a") as s:  # a writer recomputes them from the episodes
        assert s.action_stats()["q99"][0] < 1.0
    with TrajectoryStore(path) as s:
        assert s.action_stats()["q99"][0] < 1.0


def test_bad_on_corrupt_value():
    with pytest.raises(ValueError, match="on_corrupt"):
        TrajectoryStore("x.h5", "r", on_corrupt="ignore")


# ---------------------------------------------------------------------------------------------
# appending never drops indexed episodes


def test_append_refuses_when_the_episode_folder_is_missing(tmp_path):
    path = _store(tmp_path, n=2)
    shutil.move(tmp_path / "demos.h5.episodes", tmp_path / "elsewhere")
    before = path.read_bytes()
    with pytest.raises(StoreFormatError, match=r"episode folder .*demos\.h5\.episodes is missing.*2 episode"):
        TrajectoryStore(path, "a")
    assert path.read_bytes() == before and not (tmp_path / "demos.h5.episodes").exists()
    assert not (tmp_path / "demos.h5.lock").exists()
    shutil.move(tmp_path / "elsewhere", tmp_path / "demos.h5.episodes")
    with TrajectoryStore(path, "a") as s:
        assert len(s) == 2 and s.append(_episode(3, 7)) == 2


def test_append_refuses_when_an_indexed_episode_file_is_missing(tmp_path):
    path = _store(tmp_path, n=3)
    (tmp_path / "demos.h5.episodes" / "demo_1.h5").unlink()
    with pytest.raises(StoreFormatError, match=r"1 episode file\(s\) the index names are missing.*demo_1"):
        TrajectoryStore(path, "a")
    with TrajectoryStore(path) as s:
        assert len(s) == 3  # the index is untouched
    path.unlink()  # the documented way to accept the loss: re-index what remains
    with TrajectoryStore(path, "a") as s:
        assert [m["seed"] for m in s.episode_metas()] == [0, 2]


# ---------------------------------------------------------------------------------------------
# collect resumes without duplicates

SIZE = 16


def test_rerun_of_a_killed_collect_stores_no_seed_twice(tmp_path, capsys):
    from wmpo.sim.collect import collect

    path = tmp_path / "demos.h5"
    policy = lambda f, i: np.zeros((len(f), 2, 7))  # noqa: E731
    # "killed" after two of four episodes: the store holds seeds 5 and 6
    r = collect(policy, "square", path, n_episodes=2, seed=5, image_size=SIZE, max_steps=2)
    assert r.episodes == 2 and r.skipped == 0
    capsys.readouterr()
    r = collect(policy, "square", path, n_episodes=4, seed=5, num_workers=2, image_size=SIZE, max_steps=2)
    out = capsys.readouterr().out
    assert "2 start(s) already in" in out and "seeds 5-6" in out
    assert (r.episodes, r.skipped) == (2, 2)
    with TrajectoryStore(path) as s:
        assert sorted(s.stored_seeds()) == [5, 6, 7, 8]
    r = collect(policy, "square", path, n_episodes=4, seed=5, image_size=SIZE, max_steps=2, show_progress=False)
    assert (r.episodes, r.skipped) == (0, 4)
    r = collect(policy, "square", path, seeds=[5], image_size=SIZE, max_steps=2, show_progress=False, resume=False)
    assert r.episodes == 1
    with TrajectoryStore(path) as s:
        assert sorted(s.stored_seeds()) == [5, 5, 6, 7, 8]


def test_resume_from_initial_states_keeps_intended_repeats(tmp_path):
    """State starts are identified by position and state: a rerun skips them, but the same state at
    two positions (a GRPO group) is two starts."""
    from wmpo.sim.collect import collect, state_digest
    from wmpo.sim.env import make_env

    env = make_env("square", image_size=SIZE, seed=0)
    try:
        env.reset(11)
        s0 = env.get_state()
    finally:
        env.close()
    init = np.stack([s0, s0, s0])
    path = tmp_path / "rollouts.h5"
    policy = lambda f, i: np.zeros((len(f), 2, 7))  # noqa: E731
    assert collect(policy, "square", path, init_states=init[:2], image_size=SIZE, max_steps=2, show_progress=False).episodes == 2
    r = collect(policy, "square", path, init_states=init, image_size=SIZE, max_steps=2, show_progress=False)
    assert (r.episodes, r.skipped) == (1, 2)
    with TrajectoryStore(path) as s:
        metas = s.episode_metas()
    assert sorted(m["start_index"] for m in metas) == [0, 1, 2]
    assert {m["start_state_sha256"] for m in metas} == {state_digest(s0)}


def test_collect_refuses_mixing_image_sizes_and_read_only_stores(tmp_path):
    from wmpo.sim.collect import collect

    path = tmp_path / "demos.h5"
    policy = lambda f, i: np.zeros((len(f), 2, 7))  # noqa: E731
    collect(policy, "square", path, n_episodes=1, image_size=SIZE, max_steps=2, show_progress=False)
    with pytest.raises(ValueError, match="image_size=16; collecting image_size=24"):
        collect(policy, "square", path, n_episodes=1, seed=3, image_size=24, max_steps=2, show_progress=False)
    with TrajectoryStore(path) as s:
        with pytest.raises(ValueError, match="read-only"):
            collect(policy, "square", s, n_episodes=1, seed=3, image_size=SIZE, max_steps=2, show_progress=False)
        assert len(s) == 1


def test_corpus_uses_the_store_seed_helper(tmp_path):
    from wmpo.sim.corpus import corpus_counts, stored_seeds

    path = tmp_path / "square.h5"
    with TrajectoryStore(path, "w") as s:
        for i in (3, 1, 2):
            s.append(_episode(3, i))
    assert stored_seeds(path) == [3, 1, 2] and stored_seeds(tmp_path / "none.h5") == []
    assert corpus_counts(tmp_path, ["square"]) == {"square": {"episodes": 3, "successes": 2}}


# ---------------------------------------------------------------------------------------------
# stage markers hold run-relative paths


def _stages(calls):
    from wmpo.pipeline.stages import Stage

    def make(ctx):
        calls.append("make")
        p = ctx / "data" / "thing.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(str(ctx))
        return {"path": str(p), "nested": {"list": [str(p), "plain text", 3]}, "outside": "/etc/hostname"}

    def use(ctx):
        calls.append("use")
        return {"read": Path(runner_outputs[0]["make"]["path"]).read_text()}

    runner_outputs = []
    return [Stage("make", make), Stage("use", use)], runner_outputs


def test_copied_run_uses_its_own_files_and_moved_run_resumes(tmp_path):
    from wmpo.pipeline.stages import StageRunner

    a = tmp_path / "run_a"
    calls = []
    stages, holder = _stages(calls)
    runner = StageRunner(a, log=lambda s: None)
    holder.append(runner.outputs)
    runner.run(stages[:1], a)  # killed after stage "make"
    marker = json.loads((a / "stages" / "make.json").read_text())
    assert marker["outputs"]["path"] == "data/thing.txt" and marker["outputs"]["nested"]["list"][0] == "data/thing.txt"
    assert marker["outputs"]["outside"] == "/etc/hostname" and marker["outputs"]["nested"]["list"][1] == "plain text"
    # a copy resumes with its own files
    b = tmp_path / "run_b"
    shutil.copytree(a, b)
    (b / "data" / "thing.txt").write_text("the copy's file")
    runner = StageRunner(b, log=lambda s: None)
    holder[0] = runner.outputs
    outs = runner.run(stages, b)
    assert calls == ["make", "use"] and outs["use"]["read"] == "the copy's file"
    assert outs["make"]["path"] == str(b / "data" / "thing.txt")
    # a moved run resumes (the original folder is gone)
    c = tmp_path / "moved"
    shutil.move(a, c)
    runner = StageRunner(c, log=lambda s: None)
    holder[0] = runner.outputs
    outs = runner.run(stages, c)
    assert calls == ["make", "use", "use"] and outs["use"]["read"] == str(a)


def test_old_markers_with_absolute_paths_still_load(tmp_path):
    from wmpo.pipeline.stages import StageRunner

    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "data").mkdir()
    (run / "data" / "x.h5").write_text("x")
    other = tmp_path / "original" / "y.h5"
    other.parent.mkdir()
    other.write_text("y")
    (run / "stages" / "old.json").write_text(json.dumps(
        {"stage": "old", "seconds": 1.0, "outputs": {"store": str(run / "data" / "x.h5"), "n": 3}}))
    (run / "stages" / "copied.json").write_text(json.dumps({"stage": "copied", "seconds": 1.0, "outputs": {"store": str(other)}}))
    runner = StageRunner(run, log=lambda s: None)
    assert runner.load_marker("old") == {"store": str(run / "data" / "x.h5"), "n": 3}
    with pytest.warns(UserWarning, match=r"outside the run folder"):
        assert runner.load_marker("copied") == {"store": str(other)}


def test_damaged_marker_names_the_file(tmp_path):
    from wmpo.pipeline.stages import Stage, StageRunner

    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "a.json").write_text('{"stage": "a", "outp')
    with pytest.raises(ValueError, match=r"a\.json: unreadable stage marker of 'a'"):
        StageRunner(run, log=lambda s: None).run([Stage("a", lambda c: {})], None)
    (run / "stages" / "a.json").write_text('[1]')
    with pytest.raises(ValueError, match=r"a\.json: not a stage marker"):
        StageRunner(run, log=lambda s: None).run([Stage("a", lambda c: {})], None)


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_load_checkpoint_errors_name_the_file(fx):
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel
    from wmpo.utils.checkpoint import CheckpointError, load_checkpoint

    for key, msg in [("empty", "empty file"), ("truncated", "truncated or corrupt"), ("corrupt", "truncated or corrupt"),
                     ("tensor", "got a Tensor"), ("folder", "got a folder")]:
        with pytest.raises(CheckpointError, match=msg) as e:
            load_checkpoint(fx[key])
        assert fx[key] in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(fx["missing"])
    with pytest.raises(CheckpointError, match=r"policy\.pt: expected a VAE checkpoint"):
        FrameVAE.from_checkpoint(fx["policy"])
    with pytest.raises(CheckpointError, match=r"vae\.pt: expected a world-model checkpoint"):
        WorldModel.from_checkpoint(fx["vae"])
    assert FrameVAE.from_checkpoint(fx["vae"]) is not None and WorldModel.from_checkpoint(fx["wm"]) is not None


def test_interrupt_is_one_line(capsys, monkeypatch):
    from wmpo import cli

    def boom(argv):
        raise KeyboardInterrupt

    monkeypatch.delenv("WMPO_DEBUG", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "boom", ("test_faults:_boom", ""))
    monkeypatch.setattr(sys.modules[__name__], "_boom", boom, raising=False)
    assert cli.main(["boom"]) == 130
    assert "interrupted" in capsys.readouterr().err
