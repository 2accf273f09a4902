"""The tasks robosuite lacks (stack_three, three_piece_assembly, coffee): build, reset, step, render,
success checks, initial distribution, and the scripted experts."""
import importlib

import wmpo.sim  # noqa: F401  (first: it turns numba's JIT off before robosuite is imported)

import numpy as np
import pytest

from wmpo.sim.spec import TaskSpec
from wmpo.sim.tasks._waypoints import run_expert_episode

TASKS = {"stack_three": 320, "three_piece_assembly": 384, "coffee": 256}


def spec_of(name) -> TaskSpec:
    return importlib.import_module(f"wmpo.sim.tasks.{name}").SPEC


def blind_env(name):
    return spec_of(name).make_robosuite_env(
        has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, ignore_done=True, hard_reset=False
    )


def set_free_pose(env, obj, pos, yaw=0.0):
    quat = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
    env.sim.data.set_joint_qpos(obj.joints[0], np.concatenate([pos, quat]))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_spec_contract(name):
    spec = spec_of(name)
    assert isinstance(spec, TaskSpec)
    assert spec.name == name and spec.horizon == TASKS[name]
    assert isinstance(spec.instruction, str) and len(spec.instruction.split()) >= 4
    expert = spec.make_expert()
    assert callable(expert.reset) and callable(expert.act)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_builds_resets_steps_and_renders(name):
    env = spec_of(name).make_robosuite_env(
        has_offscreen_renderer=True, use_camera_obs=True, camera_names="agentview", camera_heights=64,
        camera_widths=64, ignore_done=True,
    )
    try:
        arm = env.robots[0].part_controllers["right"]
        assert type(arm).__name__ == "OperationalSpaceController" and arm.name == "OSC_POSE"
        assert env.action_dim == 7 and env.horizon == TASKS[name]
        obs = env.reset()
        assert not env._check_success()
        img = obs["agentview_image"]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        f = img.astype(np.float32)
        # a real image: varied, but spatially smooth (noise has neighbour differences ~ its spread)
        assert f.std() > 10
        assert np.abs(np.diff(f, axis=1)).mean() < 0.5 * f.std()
        for _ in range(3):
            obs, reward, done, _ = env.step(np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]))
        assert reward == 0.0 and not env._check_success()
        assert not np.array_equal(obs["agentview_image"], img)  # the arm moved
    finally:
        env.close()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_initial_distribution_is_seeded_and_narrow(name):
    env = blind_env(name)
    try:
        def start(seed):
            env.rng = np.random.default_rng(seed)
            env.reset()
            return np.concatenate([env.body_pos(o.name) for o in env.objects])

        a, b, c = start(5), start(5), start(6)
        np.testing.assert_allclose(a, b)
        assert not np.allclose(a, c)
        xy = a.reshape(-1, 3)[:, :2]
        assert np.all(np.abs(xy) < 0.25)  # objects stay near the table centre, within reach
    finally:
        env.close()


def test_stack_three_success_needs_the_right_order():
    from wmpo.sim.tasks.stack_three import HALF

    env = blind_env("stack_three")
    try:
        env.reset()
        cubes = env.cubes

        def stack(order):
            base = np.array([0.0, 0.0, 0.8])
            z = base[2]
            for i, name in enumerate(order):
                z += (HALF[order[i - 1]] if i else 0.0) + HALF[name] - (0.0005 if i else 0.0)
                set_free_pose(env, cubes[name], np.array([0.0, 0.0, z]))
            env.sim.forward()
            return env._check_success()

        assert stack(["red_cube", "green_cube", "blue_cube"])
        assert not stack(["red_cube", "blue_cube", "green_cube"])
        assert not stack(["green_cube", "red_cube", "blue_cube"])
    finally:
        env.close()


def test_three_piece_assembly_success_needs_both_pieces_inserted():
    from wmpo.sim.tasks import three_piece_assembly as tpa

    env = blind_env("three_piece_assembly")
    try:
        env.reset()
        base = env.body_pos("base")
        ring_seated = base + np.array([0.0, 0.0, tpa.RING_SEATED_DZ])
        peg_seated = base + np.array([0.0, 0.0, tpa.PEG_SEATED_DZ])
        set_free_pose(env, env.ring, ring_seated)
        set_free_pose(env, env.peg, peg_seated)
        env.sim.forward()
        assert env._check_success()
        set_free_pose(env, env.peg, base + np.array([0.0, 0.25, 0.0]))  # ring only
        env.sim.forward()
        assert env.ring_seated() and not env._check_success()
        set_free_pose(env, env.ring, base + np.array([0.0, -0.25, 0.0]))  # peg in the socket, no ring
        set_free_pose(env, env.peg, peg_seated)
        env.sim.forward()
        assert not env._check_success()
    finally:
        env.close()


def test_coffee_success_needs_pod_in_holder_and_lid_closed():
    from wmpo.sim.tasks import coffee

    env = blind_env("coffee")
    try:
        env.reset()
        assert env.lid_angle() > 1.5  # starts open
        pod_in = env.holder_pos() + np.array([0.0, 0.0, coffee.FLOOR_TOP_Z + coffee.POD_HALF_Z])
        set_free_pose(env, env.pod, pod_in)
        env.sim.forward()
        assert env.pod_in_holder() and not env._check_success()  # lid still open
        env.sim.data.set_joint_qpos(env.lid_joint, 0.0)
        env.sim.forward()
        assert env._check_success()
        set_free_pose(env, env.pod, env.holder_pos() + np.array([0.0, -0.2, 0.0]))  # lid closed, no pod
        env.sim.forward()
        assert not env._check_success()
    finally:
        env.close()


def _expert_successes(name, seeds):
    spec = spec_of(name)
    env = blind_env(name)
    try:
        return [run_expert_episode(spec, env, s)[0] for s in seeds]
    finally:
        env.close()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_expert_solves_two_seeds(name):
    assert all(_expert_successes(name, [0, 1]))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASKS))
def test_expert_success_rate_20_seeds(name):
    assert sum(_expert_successes(name, range(1000, 1020))) >= 18
