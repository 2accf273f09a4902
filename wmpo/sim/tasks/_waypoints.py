"""Shared pieces of the custom tasks: a one-Panda table env base class, env construction with the
OSC_POSE controller, and a waypoint state-machine expert driving OSC delta-pose actions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import robosuite.utils.transform_utils as T
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import CompositeObject
from robosuite.models.tasks import ManipulationTask
from robosuite.utils.observables import Observable, sensor
from robosuite.utils.placement_samplers import SequentialCompositeSampler, UniformRandomSampler

# Constants of robosuite's BASIC (OSC_POSE) controller for the Panda arm: action in [-1, 1] scales to
# these deltas (metres, radians).
POS_OUTPUT_MAX = 0.05
ROT_OUTPUT_MAX = 0.5
TABLE_TOP_Z = 0.8
GRIPPER_YAW_RANGE = (-1.3, 2.3)
"""grasp yaws are chosen in this range (rad, 0 = home). The Panda's wrist joint (+-2.9 rad, ~0.79 at home,
yaw ~ 0.79 - q7) allows about [-2.1, 3.7]; the margin keeps the arm away from the limit, and the range
is longer than pi so both finger-axis directions are always available."""

# Gripper pointing straight down with yaw 0: columns are the eef site's x, y, z axes in world coordinates
# (this is, to within a few degrees, the Panda's robosuite home orientation).
_R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def osc_pose_controller_config() -> dict:
    """robosuite 1.5 BASIC composite controller config for the Panda, checked to be OSC_POSE."""
    from robosuite.controllers import load_composite_controller_config

    cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
    arm = cfg["body_parts"]["right"]
    if arm["type"] != "OSC_POSE" or arm["input_type"] != "delta":
        raise RuntimeError(f"expected a delta OSC_POSE arm controller, got {arm['type']}/{arm['input_type']}")
    if list(arm["output_max"]) != [POS_OUTPUT_MAX] * 3 + [ROT_OUTPUT_MAX] * 3:
        raise RuntimeError(f"unexpected OSC_POSE output_max {arm['output_max']}")
    return cfg


def build_env(env_cls, horizon: int, **kwargs):
    """Construct `env_cls` with robots="Panda", the OSC_POSE controller and `horizon`, passing any
    robosuite kwargs (has_offscreen_renderer, use_camera_obs, camera_names, camera_heights/widths,
    control_freq, ignore_done, hard_reset, seed, ...) through."""
    kwargs.setdefault("horizon", horizon)
    kwargs.setdefault("camera_names", "agentview")
    kwargs.setdefault("controller_configs", osc_pose_controller_config())
    if "robots" in kwargs and kwargs["robots"] != "Panda":
        raise ValueError(f"robots: expected 'Panda', got {kwargs['robots']!r}")
    kwargs["robots"] = "Panda"
    return env_cls(**kwargs)


def wrap_angle(a: float, period: float = 2 * np.pi) -> float:
    """a wrapped into [-period/2, period/2)."""
    return float((a + period / 2) % period - period / 2)


def yaw_of(rot: np.ndarray) -> float:
    """Yaw (rotation about world z) of a 3x3 rotation matrix's x axis."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


class TableTaskEnv(ManipulationEnv):
    """One Panda at a table; subclasses define `_make_objects()` (-> objects, placement sampler),
    `_check_success()` and optionally `_reset_extra()` for non-free joints."""

    def __init__(
        self,
        robots="Panda",
        table_full_size=(0.8, 0.8, 0.05),
        table_friction=(1.0, 5e-3, 1e-4),
        use_object_obs=True,
        reward_scale=1.0,
        reward_shaping=False,
        initialization_noise="default",
        **kwargs,
    ):
        self.table_full_size = table_full_size
        self.table_friction = table_friction
        self.table_offset = np.array((0.0, 0.0, TABLE_TOP_Z))
        self.use_object_obs = use_object_obs
        self.reward_scale = reward_scale
        self.reward_shaping = reward_shaping  # sparse only; kept for robosuite API compatibility
        self.objects: list = []
        self.placement_initializer = None
        super().__init__(robots=robots, initialization_noise=initialization_noise, **kwargs)

    # ---- model ---------------------------------------------------------------------------
    def _make_objects(self):
        raise NotImplementedError

    def placement_sampler(self, name: str, objects, x_range, y_range, rotation, z_offset: float = 0.001) -> UniformRandomSampler:
        """Uniform placement on the table (ranges relative to its centre, yaw about z), drawn from env.rng."""
        return UniformRandomSampler(
            name=name, mujoco_objects=objects, x_range=x_range, y_range=y_range, rotation=rotation, rotation_axis="z",
            ensure_object_boundary_in_range=False, ensure_valid_placement=True, reference_pos=self.table_offset,
            z_offset=z_offset, rng=self.rng,
        )

    def per_object_sampler(self, rows) -> SequentialCompositeSampler:
        """One placement sampler per (object, x_range, y_range, rotation) row, applied in order."""
        sampler = SequentialCompositeSampler(name="ObjectSampler")
        for obj, xr, yr, rot in rows:
            sampler.append_sampler(self.placement_sampler(f"{obj.name}_sampler", obj, xr, yr, rot))
        return sampler

    def _load_model(self):
        super()._load_model()
        xpos = self.robots[0].robot_model.base_xpos_offset["table"](self.table_full_size[0])
        self.robots[0].robot_model.set_base_xpos(xpos)
        arena = TableArena(
            table_full_size=self.table_full_size,
            table_friction=self.table_friction,
            table_offset=self.table_offset,
        )
        arena.set_origin([0, 0, 0])
        self.objects, self.placement_initializer = self._make_objects()
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[robot.robot_model for robot in self.robots],
            mujoco_objects=self.objects,
        )

    def _setup_references(self):
        super()._setup_references()
        self.obj_body_id = {o.name: self.sim.model.body_name2id(o.root_body) for o in self.objects}
        self.eef_site_id = self.robots[0].eef_site_id["right"]

    def _setup_observables(self):
        observables = super()._setup_observables()
        if not self.use_object_obs:
            return observables
        for obj in self.objects:
            for name, s in self._object_sensors(obj.name):
                observables[name] = Observable(name=name, sensor=s, sampling_rate=self.control_freq)
        return observables

    def _object_sensors(self, obj_name):
        body = self.obj_body_id[obj_name]

        @sensor(modality="object")
        def pos(obs_cache):
            return np.array(self.sim.data.body_xpos[body])

        @sensor(modality="object")
        def quat(obs_cache):
            w, x, y, z = self.sim.data.body_xquat[body]
            return np.array([x, y, z, w])

        return [(f"{obj_name}_pos", pos), (f"{obj_name}_quat", quat)]

    def _reset_internal(self):
        super()._reset_internal()
        if not self.deterministic_reset:
            self.placement_initializer.rng = self.rng  # follow env.rng if a caller reseeded it
            for obj_pos, obj_quat, obj in self.placement_initializer.sample().values():
                self.sim.data.set_joint_qpos(
                    obj.joints[0], np.concatenate([np.array(obj_pos), np.array(obj_quat)])
                )
            self._reset_extra()

    def _reset_extra(self):
        pass

    def reward(self, action=None):
        r = float(self._check_success())
        return r * self.reward_scale if self.reward_scale is not None else r

    # ---- helpers for success checks and experts -------------------------------------------
    def body_pos(self, obj_name: str) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.obj_body_id[obj_name]])

    def body_rot(self, obj_name: str) -> np.ndarray:
        return np.array(self.sim.data.body_xmat[self.obj_body_id[obj_name]]).reshape(3, 3)

    def body_yaw(self, obj_name: str) -> float:
        return yaw_of(self.body_rot(obj_name))

    def eef_pos(self) -> np.ndarray:
        return np.array(self.sim.data.site_xpos[self.eef_site_id])

    def eef_rot(self) -> np.ndarray:
        return np.array(self.sim.data.site_xmat[self.eef_site_id]).reshape(3, 3)

    def gripper_yaw(self) -> float:
        """0 at the home orientation (eef x axis along world +y)."""
        return wrap_angle(yaw_of(self.eef_rot()) - np.pi / 2)

    def grasping(self, obj) -> bool:
        return bool(self._check_grasp(gripper=self.robots[0].gripper, object_geoms=obj))


# ---- expert ---------------------------------------------------------------------------------------


@dataclass
class Waypoint:
    """One phase of a scripted motion: drive the grip site to `pos(env)` with the gripper at `grip`."""

    name: str
    pos: Callable[[Any], np.ndarray]
    """env -> target grip-site position (re-evaluated every step, so it tracks moving objects)"""
    grip: float
    """-1 open, +1 closed"""
    yaw: Optional[Callable[[Any, float], float]] = None
    """(env, previous target) -> target gripper yaw in rad (None: keep the previous target)"""
    yaw_tol: float = 0.06
    """yaw error (rad) below which the phase may end (when `yaw` is set)"""
    tol: float = 0.008
    """position error (m) below which the phase is done"""
    min_steps: int = 0
    """the phase lasts at least this many steps (e.g. for the gripper to close)"""
    max_steps: int = 60
    """the phase ends after this many steps even if the target was not reached"""
    speed: float = 1.0
    """max |action| per position axis"""
    end_on_stall: bool = False
    """the phase also ends once the grip site stops moving (e.g. a lowered object touched down)"""


def nearest_symmetric_yaw(target: float, current: float, period: float = np.pi / 2) -> float:
    """The yaw equal to `target` modulo `period` closest to `current`, inside GRIPPER_YAW_RANGE
    when one is."""
    lo, hi = GRIPPER_YAW_RANGE
    cands = [target + k * period for k in range(-8, 9) if lo <= target + k * period <= hi]
    if not cands:
        return current + wrap_angle(target - current, period)
    return float(min(cands, key=lambda y: abs(y - current)))


class WaypointExpert:
    """Runs a list of waypoints built by `plan(env)` at reset; `act(env)` -> float[7] OSC action."""

    gain = 1.5
    """proportional gain from position error (in units of the controller's max delta) to action"""

    def plan(self, env) -> list[Waypoint]:
        raise NotImplementedError

    def reset(self, env) -> None:
        self.waypoints = self.plan(env)
        self.index = 0
        self.steps_in_phase = 0
        self.yaw_target = env.gripper_yaw()
        self.recent = []

    @property
    def phase(self) -> str:
        return self.waypoints[min(self.index, len(self.waypoints) - 1)].name

    @property
    def done(self) -> bool:
        return self.index >= len(self.waypoints)

    def act(self, env) -> np.ndarray:
        wp = self.waypoints[min(self.index, len(self.waypoints) - 1)]
        target = np.asarray(wp.pos(env), dtype=np.float64)
        if wp.yaw is not None:
            self.yaw_target = wp.yaw(env, self.yaw_target)
        err = target - env.eef_pos()
        if not self.done:
            self.steps_in_phase += 1
            yaw_ok = wp.yaw is None or abs(wrap_angle(self.yaw_target - env.gripper_yaw())) < wp.yaw_tol
            reached = np.linalg.norm(err) < wp.tol and yaw_ok and self.steps_in_phase >= wp.min_steps
            self.recent = (self.recent + [env.eef_pos()])[-6:]
            stalled = (wp.end_on_stall and self.steps_in_phase > 8
                       and np.linalg.norm(self.recent[-1] - self.recent[0]) < 0.001)
            if reached or stalled or self.steps_in_phase >= wp.max_steps:
                self.index += 1
                self.steps_in_phase = 0
                self.recent = []
        action = np.zeros(7)
        action[:3] = np.clip(self.gain * err / POS_OUTPUT_MAX, -wp.speed, wp.speed)
        action[3:6] = self._rotation_action(env)
        action[6] = wp.grip
        return action

    def _rotation_action(self, env) -> np.ndarray:
        # step the yaw toward the target the way that stays inside the wrist's travel (never the
        # "shorter" way through the joint limit), and keep the gripper pointing down
        centre = sum(GRIPPER_YAW_RANGE) / 2
        current = centre + wrap_angle(env.gripper_yaw() - centre)
        yaw = current + np.clip(self.yaw_target - current, -0.4, 0.4)
        c, s = np.cos(yaw), np.sin(yaw)
        rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        r_err = rz @ _R_DOWN @ env.eef_rot().T
        rotvec = T.quat2axisangle(T.mat2quat(r_err))
        return np.clip(rotvec / ROT_OUTPUT_MAX, -1.0, 1.0)


# ---- pick and place building blocks -------------------------------------------------------------



def finger_axis(yaw: float) -> np.ndarray:
    """Unit xy direction along which the Panda fingers open, for gripper yaw `yaw`."""
    return np.array([-np.sin(yaw), np.cos(yaw)])


def clear_grasp_yaw(env, obj: str, avoid, prev: float, period: float) -> float:
    """Grasp yaw equal to the object's yaw modulo `period` whose finger axis keeps away from the
    bodies in `avoid` (ties: closest to `prev`)."""
    base = env.body_yaw(obj)
    lo, hi = GRIPPER_YAW_RANGE
    cands = [base + k * period for k in range(-8, 9) if lo <= base + k * period <= hi]
    p = env.body_pos(obj)[:2]

    def score(yaw):
        d = finger_axis(yaw)
        risk = 0.0
        for other in avoid:
            v = env.body_pos(other)[:2] - p
            dist = np.linalg.norm(v) + 1e-6
            risk = max(risk, abs(d @ v) / dist / dist)
        return risk + 0.01 * abs(wrap_angle(yaw - prev))

    return float(min(cands, key=score))


def pick_and_place(
    name: str,
    obj: str,
    grasp_offset: np.ndarray,
    place_target: Callable[[Any], np.ndarray],
    obj_yaw_period: float = np.pi / 2,
    place_yaw: Optional[Callable[[Any], float]] = None,
    safe_z: float = TABLE_TOP_Z + 0.16,
    approach_height: float = 0.08,
    place_tol: float = 0.006,
    avoid: tuple[str, ...] = (),
    align_tol: float = 0.01,
    hover: float = 0.05,
    fixed_grasp_yaw: Optional[float] = None,
) -> list[Waypoint]:
    """Waypoints that grasp body `obj` at `obj pos + grasp_offset` and bring the body's origin to
    `place_target(env)`, then release and retreat upward. If `place_yaw` is given, the held object's
    yaw is turned to it (modulo `obj_yaw_period`) on the way. Among the symmetric grasp yaws, the one
    whose finger axis points away from the bodies in `avoid` is chosen (or `fixed_grasp_yaw`)."""

    def grasp_point(env):
        return env.body_pos(obj) + grasp_offset

    def above_grasp(env):
        p = grasp_point(env)
        p[2] += approach_height
        return p

    def grasp_yaw(env, prev):
        if fixed_grasp_yaw is not None:
            return fixed_grasp_yaw
        return clear_grasp_yaw(env, obj, avoid, prev, obj_yaw_period)

    def lift(env):
        p = env.eef_pos()
        return np.array([p[0], p[1], safe_z])

    def carry_to(offset_z):
        def f(env):
            # move the held object (not the gripper) to the target, so grasp slip is compensated
            tgt = place_target(env) + np.array([0.0, 0.0, offset_z])
            return env.eef_pos() + (tgt - env.body_pos(obj))

        return f

    def hold_yaw(env, prev):
        if place_yaw is None:
            return prev
        wanted = env.gripper_yaw() + place_yaw(env) - env.body_yaw(obj)
        return nearest_symmetric_yaw(wanted, prev, obj_yaw_period)

    def above_place(env):
        p = carry_to(0.0)(env)
        p[2] = max(p[2] + hover, safe_z - 0.03)
        return p

    def retreat(env):
        p = env.eef_pos()
        return np.array([p[0], p[1], safe_z])

    def transit(env):
        p = grasp_point(env)
        return np.array([p[0], p[1], max(safe_z, p[2] + approach_height)])

    return [
        Waypoint(f"{name}:transit", transit, -1.0, yaw=grasp_yaw, tol=0.015, max_steps=60),
        Waypoint(f"{name}:above", above_grasp, -1.0, yaw=grasp_yaw, tol=0.01, max_steps=40),
        Waypoint(f"{name}:descend", grasp_point, -1.0, yaw=grasp_yaw, tol=0.008, max_steps=40, speed=0.6),
        Waypoint(f"{name}:close", grasp_point, 1.0, min_steps=10, max_steps=10, tol=1.0),
        Waypoint(f"{name}:lift", lift, 1.0, tol=0.02, max_steps=40),
        Waypoint(f"{name}:carry", above_place, 1.0, yaw=hold_yaw, tol=0.01, max_steps=70),
        Waypoint(f"{name}:align", carry_to(hover), 1.0, yaw=hold_yaw, tol=align_tol, max_steps=40, speed=0.6),
        Waypoint(f"{name}:lower", carry_to(0.0), 1.0, yaw=hold_yaw, tol=place_tol, max_steps=50, speed=0.5,
                 yaw_tol=0.1, end_on_stall=True),
        Waypoint(f"{name}:release", lambda env: env.eef_pos(), -1.0, min_steps=6, max_steps=6, tol=1.0),
        Waypoint(f"{name}:retreat", retreat, -1.0, tol=0.02, max_steps=30),
    ]


# ---- evaluation -----------------------------------------------------------------------------------


def run_expert_episode(spec, env, seed: int) -> tuple[bool, int]:
    """Reseed `env` (a robosuite env from spec.make_robosuite_env), reset, run the expert until
    success or the horizon. -> (success, steps)."""
    env.rng = np.random.default_rng(seed)
    env.reset()
    expert = spec.make_expert()
    expert.reset(env)
    for t in range(spec.horizon):
        env.step(expert.act(env))
        if env._check_success():
            return True, t + 1
    return False, spec.horizon


def evaluate_expert(spec, seeds, verbose: bool = False) -> dict:
    """Expert success rate over `seeds`, without rendering."""
    import time

    env = spec.make_robosuite_env(
        has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, ignore_done=True, hard_reset=False
    )
    results, steps, t0 = [], 0, time.time()
    for seed in seeds:
        ok, n = run_expert_episode(spec, env, seed)
        results.append(ok)
        steps += n
        if verbose:
            print(f"{spec.name} seed {seed}: {'success' if ok else 'FAIL'} in {n} steps", flush=True)
    env.close()
    dt = time.time() - t0
    return {
        "task": spec.name,
        "episodes": len(results),
        "successes": int(sum(results)),
        "success_rate": float(np.mean(results)),
        "failed_seeds": [s for s, ok in zip(seeds, results) if not ok],
        "steps_per_s": steps / dt,
    }


if __name__ == "__main__":  # python -m wmpo.sim.tasks._waypoints TASK [N_SEEDS] [FIRST_SEED]
    import importlib
    import json
    import sys

    task = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    spec = importlib.import_module(f"wmpo.sim.tasks.{task}").SPEC
    print(json.dumps(evaluate_expert(spec, list(range(first, first + n)), verbose=True)))


def walled_box(name: str, half: float, floor_half_z: float, inner_half: float, wall_half: float, wall_half_z: float,
               floor_name: str, rgba, density: float, material: str | None = None) -> CompositeObject:
    """A square floor plate [half, half, floor_half_z] with four walls of half-thickness wall_half and
    half-height wall_half_z around an inner square of half-width inner_half (a cup, a socket); the
    body origin is at the middle of plate + walls. `material`: the name of a material (appended to the
    object by the caller) for all five visual geoms."""
    t, h = wall_half, wall_half_z
    half_z = floor_half_z + wall_half_z
    off = inner_half + t
    wall_z = -half_z + 2 * floor_half_z + h
    w = inner_half + 2 * t
    return CompositeObject(
        name=name,
        total_size=[half, half, half_z],
        geom_types=["box"] * 5,
        geom_sizes=[[half, half, floor_half_z], [t, w, h], [t, w, h], [inner_half, t, h], [inner_half, t, h]],
        geom_locations=[[0, 0, -half_z + floor_half_z], [off, 0, wall_z], [-off, 0, wall_z], [0, off, wall_z], [0, -off, wall_z]],
        geom_names=[floor_name, "wall_xp", "wall_xn", "wall_yp", "wall_yn"],
        rgba=rgba,
        geom_materials=None if material is None else [material] * 5,
        density=density,
        locations_relative_to_center=True,
    )
