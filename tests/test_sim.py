"""Tasks registry, TaskEnv (square), rendering, numba safety, reset_to, initial states, expert."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import wmpo.sim as sim
from wmpo.sim import TASKS, make_env
from wmpo.sim.evaluate import wilson_interval
from wmpo.sim.initial_states import SEED_BASE, get_initial_states
from wmpo.sim.spec import TaskSpec

REPO = Path(__file__).resolve().parents[1]


def neighbour_correlation(frame: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels (grey): ~1 for renders, ~0 for noise."""
    g = frame.astype(np.float64).mean(-1)
    a, b = g[:, :-1].ravel(), g[:, 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def assert_real_image(frame: np.ndarray, size: int):
    assert frame.dtype == np.uint8 and frame.shape == (size, size, 3)
    assert frame.std() > 5, "blank frame"
    assert neighbour_correlation(frame) > 0.6, "frame looks like noise"
    noise = np.random.default_rng(0).integers(0, 256, frame.shape, dtype=np.uint8)
    assert neighbour_correlation(noise) < 0.2  # the check itself can tell noise apart


@pytest.fixture(scope="module")
def env():
    e = make_env("square", image_size=32, seed=0)
    yield e
    e.close()


def test_registry():
    assert "square" in TASKS and isinstance(TASKS["square"], TaskSpec)
    spec = TASKS["square"]
    assert spec.instruction == "Insert the square into the stick" and spec.horizon == 184
    assert sim.get_task("square") is spec
    with pytest.raises(ValueError, match="task: expected one of"):
        sim.get_task("nope")
    with pytest.raises(ValueError, match="task"):
        make_env("nope")


def test_numba_jit_disabled_on_import():
    import os

    import numba

    assert os.environ["NUMBA_DISABLE_JIT"] == "1"
    assert numba.config.DISABLE_JIT
    import robosuite.utils.transform_utils as T

    assert not hasattr(T.mat2quat, "py_func"), "robosuite transform utils were numba-compiled"


def test_reset_step_render(env):
    f0 = env.reset(seed=5)
    assert_real_image(f0, 32)
    assert env.instruction == "Insert the square into the stick" and env.horizon == 184
    assert not env.is_success()
    frame, reward, done, info = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1.0]))
    assert_real_image(frame, 32)
    assert reward == 0.0 and done is False and info["success"] is False
    assert not np.array_equal(frame, f0)  # the arm moved
    with pytest.raises(ValueError, match=r"action: expected shape \(7,\)"):
        env.step(np.zeros(6))
    # the nut starts in the narrow D0 box with its handle pointing left
    from wmpo.sim.tasks import square

    p, yaw = env.raw.nut_pos(), env.raw.nut_yaw()
    assert square.X_RANGE[0] - 1e-3 <= p[0] <= square.X_RANGE[1] + 1e-3
    assert square.Y_RANGE[0] - 1e-3 <= p[1] <= square.Y_RANGE[1] + 1e-3
    assert square.YAW_RANGE[0] - 1e-3 <= yaw % (2 * np.pi) <= square.YAW_RANGE[1] + 1e-3


def test_seeded_reset_and_reset_to_bit_identical(env):
    f_a = env.reset(seed=11)
    s_a = env.get_state()
    f_b = env.reset(seed=12)
    assert not np.array_equal(env.get_state(), s_a)
    assert np.array_equal(env.reset(seed=11), f_a) and np.array_equal(env.get_state(), s_a)
    for _ in range(3):
        env.step(np.array([0.5, 0.2, 0.0, 0, 0, 0, 1.0]))
    assert np.array_equal(env.reset_to(s_a), f_a)
    assert np.array_equal(env.get_state(), s_a)
    # a fresh env reproduces the frame from the state alone
    other = make_env("square", image_size=32, seed=99)
    try:
        assert np.array_equal(other.reset_to(s_a), f_a)
        # and the dynamics after reset_to match
        a = np.array([0.3, -0.2, 0.1, 0, 0, 0.1, -1.0])
        env.reset_to(s_a)
        for _ in range(3):
            fe, *_ = env.step(a)
            fo, *_ = other.step(a)
        assert np.array_equal(fe, fo)
    finally:
        other.close()
    assert not np.array_equal(f_a, f_b)
    with pytest.raises(ValueError, match="state: expected shape"):
        env.reset_to(s_a[:-1])


def test_fresh_process_renders_real_images(tmp_path):
    """A new interpreter (numba importable, EGL) renders images, not noise, at several sizes."""
    out = tmp_path / "frames.npz"
    code = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        import numba  # present and imported first, as in a user's process
        from wmpo.sim import make_env
        frames = {{}}
        for size in (32, 64):
            env = make_env("square", image_size=size)
            frames[str(size)] = env.reset(seed=0)
            env.close()
        np.savez({str(out)!r}, **frames)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    frames = np.load(out)
    for size in (32, 64):
        assert_real_image(frames[str(size)], size)


def test_initial_states_disjoint_deterministic_cached(tmp_path):
    train = get_initial_states("square", "train", n=3, cache_dir=tmp_path)
    evals = get_initial_states("square", "eval", n=3, cache_dir=tmp_path)
    assert train.shape == evals.shape and train.dtype == np.float64
    assert len(list((tmp_path / "initial_states").glob("*.npy"))) == 2
    again = get_initial_states("square", "train", n=3, use_cache=False)
    np.testing.assert_array_equal(train, again)
    assert np.array_equal(get_initial_states("square", "train", n=3, cache_dir=tmp_path), train)
    assert not any(np.array_equal(t, e) for t in train for e in evals)
    assert len({t.tobytes() for t in train}) == 3
    assert SEED_BASE["eval"] - SEED_BASE["train"] >= 1_000_000
    with pytest.raises(ValueError, match="split"):
        get_initial_states("square", "test", n=3)


@pytest.mark.parametrize("seed", [0, 1])
def test_expert_solves_square(seed):
    env = make_env("square", image_size=0)
    try:
        assert env.reset(seed=seed) is None
        for _ in range(env.horizon):
            _, reward, done, info = env.step(env.expert_action())
            if done:
                break
        assert info["success"] and reward == 1.0 and env.t < env.horizon
    finally:
        env.close()


@pytest.mark.slow
def test_expert_success_rate_50_seeds():
    from wmpo.sim.evaluate import expert_success

    out = expert_success("square", n=50, first_seed=5000)
    assert out["successes"] >= 45, out


def test_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
