"""VecEnv == single env; collect() with the expert and with a chunking callable; evaluate; CLI."""
import numpy as np
import pytest

from wmpo.data.store import TrajectoryStore
from wmpo.sim import make_env
from wmpo.sim.collect import collect
from wmpo.sim.vec_env import VecEnv

SIZE = 32


@pytest.fixture(scope="module")
def venv():
    v = VecEnv("square", num_envs=2, image_size=SIZE, seed=0)
    yield v
    v.close()


@pytest.fixture(scope="module")
def single():
    e = make_env("square", image_size=SIZE)
    yield e
    e.close()


def test_vec_env_matches_single_env(venv, single):
    seeds = [3, 4]
    frames = venv.reset(seeds)
    assert frames.shape == (2, SIZE, SIZE, 3) and frames.dtype == np.uint8
    states = venv.last_states.copy()
    np.testing.assert_array_equal(venv.get_states(), states)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (4, 2, 7))
    out = [venv.step(a) for a in actions]
    for i, seed in enumerate(seeds):
        assert np.array_equal(single.reset(seed), frames[i])
        np.testing.assert_array_equal(single.get_state(), states[i])
        for t in range(4):
            f, r, d, info = single.step(actions[t, i])
            assert np.array_equal(f, out[t][0][i]) and r == out[t][1][i] and d == out[t][2][i]
            assert info["success"] == out[t][3][i]
    # reset_to and the in-worker expert
    frames = venv.reset_to(states)
    f_e, _, _, _, a_e = venv.step_expert()
    for i in range(2):
        assert np.array_equal(single.reset_to(states[i]), frames[i])
        a = single.expert_action()
        np.testing.assert_array_equal(a, a_e[i])
        assert np.array_equal(single.step(a)[0], f_e[i])
    # masks: only env 1 steps
    before = venv.get_states()
    venv.step(np.zeros((2, 7)), mask=[False, True])
    after = venv.get_states()
    np.testing.assert_array_equal(before[0], after[0])
    assert not np.array_equal(before[1], after[1])
    with pytest.raises(ValueError, match=r"actions: expected shape \(2, 7\)"):
        venv.step(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="states: expected shape"):
        venv.reset_to(states[:1])


def test_collect_with_chunking_policy_replays_in_single_env(tmp_path, single):
    calls = []

    def policy(frames, instructions):
        assert frames.dtype == np.uint8 and frames.shape[1:] == (SIZE, SIZE, 3)
        assert instructions == ["Insert the square into the stick"] * len(frames)
        calls.append(len(frames))
        rng = np.random.default_rng(len(calls))
        return rng.uniform(-1, 1, (len(frames), 3, 7))

    path = tmp_path / "demos.h5"
    res = collect(policy, "square", path, n_episodes=3, seed=7, num_workers=2, image_size=SIZE,
                  max_steps=7, show_progress=False)
    assert res.episodes == 3 and res.env_steps == 21
    assert sum(calls) == 3 * 3  # ceil(7 / 3) chunks per episode
    with TrajectoryStore(path) as store:
        assert len(store) == 3
        assert store.env_meta["env_name"] == "square" and store.env_meta["image_size"] == SIZE
        seeds = sorted(store.load(i).meta["seed"] for i in range(3))
        assert seeds == [7, 8, 9]
        ep = store.load(0)
        assert ep.frames.shape == (8, SIZE, SIZE, 3) and ep.actions.shape == (7, 7) and ep.states.shape[0] == 8
        assert not ep.success and ep.finish_step == 7 and ep.dones[-1] and not ep.dones[:-1].any()
        # the recorded episode replays exactly in a single env
        assert np.array_equal(single.reset(ep.meta["seed"]), ep.frames[0])
        for t in range(7):
            f, *_ = single.step(ep.actions[t])
            assert np.array_equal(f, ep.frames[t + 1])
            np.testing.assert_array_equal(single.get_state(), ep.states[t + 1])
    with TrajectoryStore(path, "a") as store:
        with pytest.raises(ValueError, match="policy output"):
            collect(lambda f, i: np.zeros((len(f), 7, 3)), "square", store, n_episodes=1, image_size=SIZE,
                    show_progress=False)
        assert len(store) == 3


def test_cli_collect_and_evaluate_smoke(tmp_path):
    from wmpo.cli.sim import collect_main, eval_main
    from wmpo.sim.evaluate import evaluate

    out = tmp_path / "demos.h5"
    assert collect_main(["--task", "square", "--policy", "random", "--episodes", "1", "--seed", "3",
                         "--image-size", str(SIZE), "--max-steps", "4", "--out", str(out)]) == 0
    with TrajectoryStore(out) as store:
        ep = store.load(0)
    assert len(ep) == 4 and ep.meta["seed"] == 3 and not ep.success
    res = evaluate("expert", "square", init_states=np.stack([ep.states[0]] * 2), num_workers=1, image_size=SIZE,
                   video_dir=tmp_path / "videos", n_videos=1, max_steps=5, show_progress=False)
    assert res.n == 2 and res.success_rate == 0.0 and np.isnan(res.mean_success_length)
    assert [r.index for r in res.episodes] == [0, 1] and all(r.length == 5 for r in res.episodes)
    import imageio.v2 as imageio

    assert len(res.videos) == 1
    video = imageio.mimread(res.videos[0])
    assert len(video) == 6 and video[0].shape == (SIZE, SIZE, 3)
    with pytest.raises(SystemExit):
        eval_main(["--task", "nope"])


@pytest.mark.slow
def test_expert_collect_cli_and_evaluate(tmp_path):
    from wmpo.cli.sim import collect_main
    from wmpo.sim.evaluate import evaluate

    out = tmp_path / "demos.h5"
    assert collect_main(["--task", "square", "--policy", "expert", "--episodes", "1", "--seed", "0",
                         "--image-size", str(SIZE), "--out", str(out)]) == 0
    with TrajectoryStore(out) as store:
        ep = store.load(0)
    assert ep.success and ep.finish_step == len(ep) < 184 and ep.rewards[-1] == 1.0
    res = evaluate("expert", "square", init_states=ep.states[:1], num_workers=1, image_size=SIZE,
                   video_dir=tmp_path / "videos", n_videos=1, show_progress=False)
    assert res.n == 1 and res.success_rate == 1.0 and res.mean_success_length == len(ep)
    assert res.ci95[0] > 0.0 and res.ci95[1] == pytest.approx(1.0)
    assert len(res.videos) == 1
    import imageio.v2 as imageio

    video = imageio.mimread(res.videos[0])
    assert len(video) == len(ep) + 1 and video[0].shape == (SIZE, SIZE, 3)
