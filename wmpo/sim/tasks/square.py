"""square: robosuite NutAssemblySquare with a narrow (D0-like) initial distribution.

The square nut starts flat on the table in a small box left of the robot with its handle pointing left (+y, small yaw noise); the
expert grasps the handle, lifts the nut above the square peg, turns it so the hole lines up with
the peg, lowers it over the peg and lets go.
"""
from __future__ import annotations

import numpy as np
from robosuite.environments.manipulation.nut_assembly import NutAssemblySquare
from robosuite.utils.placement_samplers import UniformRandomSampler

from wmpo.sim.spec import Disruption, TaskSpec
from wmpo.sim.tasks._waypoints import (
    Waypoint,
    WaypointExpert,
    nearest_symmetric_yaw,
    osc_pose_controller_config,
    wrap_angle,
    yaw_of,
)

INSTRUCTION = "Insert the square into the stick"
HORIZON = 184

# D0-like initial distribution of the nut (robosuite's default is x in [-0.115, -0.11],
# y in [0.11, 0.225] and any yaw)
X_RANGE = (-0.12, -0.10)
Y_RANGE = (0.12, 0.19)
YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)
"""nut yaw: the handle points left (+y). A handle on the far side (+x) puts the gripper at the edge
of the Panda's reach over the peg."""


class SquareEnv(NutAssemblySquare):
    """NutAssemblySquare with the narrow sampler and the pose helpers the waypoint expert reads."""

    def __init__(self, **kwargs):
        sampler = UniformRandomSampler(
            name="SquareNutSampler",
            x_range=list(X_RANGE),
            y_range=list(Y_RANGE),
            rotation=list(YAW_RANGE),
            rotation_axis="z",
            ensure_object_boundary_in_range=False,
            ensure_valid_placement=True,
            reference_pos=np.array((0, 0, 0.82)),
            z_offset=0.02,
        )
        super().__init__(placement_initializer=sampler, **kwargs)

    def _load_model(self):
        # NutAssembly adds both nuts to a flat sampler; only the square nut is in play
        super()._load_model()
        self.placement_initializer.reset()
        self.placement_initializer.add_objects([n for n in self.nuts if n.name == "SquareNut"])

    def _setup_references(self):
        super()._setup_references()
        self.nut_body = self.obj_body_id["SquareNut"]
        nut = next(n for n in self.nuts if n.name == "SquareNut")
        self.handle_site = self.sim.model.site_name2id(nut.important_sites["handle"])
        self.eef_site = self.robots[0].eef_site_id["right"]

    # ---- poses --------------------------------------------------------------------------
    def nut_pos(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.nut_body])

    def nut_yaw(self) -> float:
        return yaw_of(np.array(self.sim.data.body_xmat[self.nut_body]).reshape(3, 3))

    def handle_pos(self) -> np.ndarray:
        return np.array(self.sim.data.site_xpos[self.handle_site])

    def peg_pos(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.peg1_body_id])

    def eef_pos(self) -> np.ndarray:
        return np.array(self.sim.data.site_xpos[self.eef_site])

    def eef_rot(self) -> np.ndarray:
        return np.array(self.sim.data.site_xmat[self.eef_site]).reshape(3, 3)

    def gripper_yaw(self) -> float:
        return wrap_angle(yaw_of(self.eef_rot()) - np.pi / 2)


# The `position` disruption (paper Fig. 4a): the square peg, fixed at robosuite's (0.23, 0.10) in the
# nominal task, is drawn uniformly in this rectangle (world x, y in m) at every reset. The nominal spot
# is its far corner; the rectangle stays clear of the round peg (y = -0.10) and of the nut's start box.
PEG_X_RANGE = (0.13, 0.23)
PEG_Y_RANGE = (0.02, 0.14)


class SquarePegPositionEnv(SquareEnv):
    """SquareEnv whose square peg moves to a random spot in PEG_X_RANGE x PEG_Y_RANGE at every reset.

    The peg is a fixed body (not part of the simulator state): its position is drawn from `self.rng`
    after the nut's placement, so a seeded reset gives the nominal task's nut placement plus a peg
    position, and TaskEnv.reset_to (which reseeds from the restored state) gives each initial state
    its own peg position, the same every time."""

    def _setup_references(self):
        super()._setup_references()
        self.nominal_peg_pos = np.array(self.sim.model.body_pos[self.peg1_body_id])

    def _reset_internal(self):
        super()._reset_internal()
        xy = (self.rng.uniform(*PEG_X_RANGE), self.rng.uniform(*PEG_Y_RANGE))
        self.sim.model.body_pos[self.peg1_body_id] = np.array([xy[0], xy[1], self.nominal_peg_pos[2]])


def make_robosuite_env(**kwargs):
    """robosuite kwargs pass through; Panda, OSC_POSE and the task horizon are the defaults."""
    return _build(SquareEnv, **kwargs)


def make_peg_position_env(**kwargs):
    """The `position` disruption: as make_robosuite_env, with the peg's position random (see
    SquarePegPositionEnv)."""
    return _build(SquarePegPositionEnv, **kwargs)


def _build(env_cls, **kwargs):
    kwargs.setdefault("horizon", HORIZON)
    kwargs.setdefault("camera_names", "agentview")
    if "controller_configs" not in kwargs:
        cfg = osc_pose_controller_config()
        # the Panda has only the "right" arm part: drop the others robosuite would warn about
        cfg["body_parts"] = {k: v for k, v in cfg["body_parts"].items() if k == "right"}
        kwargs["controller_configs"] = cfg
    if kwargs.setdefault("robots", "Panda") != "Panda":
        raise ValueError(f"robots: expected 'Panda', got {kwargs['robots']!r}")
    return env_cls(**kwargs)


TABLE_Z = 0.82
SAFE_Z = TABLE_Z + 0.23
PEG_TOP_Z = 0.95
"""carry height of the grip site: the nut (held at its handle) clears the 0.13 m tall peg"""


class SquareExpert(WaypointExpert):
    """Handle grasp -> lift -> carry the nut centre over the peg, yaw aligned -> lower -> release."""

    def plan(self, env):
        def grasp_yaw(env, prev):
            # fingers close across the handle bar: finger axis perpendicular to the nut's x axis
            return nearest_symmetric_yaw(env.nut_yaw(), prev, np.pi)

        def above_handle(dz):
            def f(env):
                return env.handle_pos() + np.array([0.0, 0.0, dz])

            return f

        def lift(env):
            p = env.eef_pos()
            return np.array([p[0], p[1], TABLE_Z + 0.11])

        def carry(z):
            def f(env):
                # move the nut centre (not the gripper) over the peg
                d = env.peg_pos() - env.nut_pos()
                p = env.eef_pos() + np.array([d[0], d[1], 0.0])
                p[2] = z if z is not None else p[2]
                return p

            return f

        def align_yaw(env, prev):
            wanted = env.gripper_yaw() + wrap_angle(0.0 - env.nut_yaw(), np.pi / 2)
            return nearest_symmetric_yaw(wanted, prev, np.pi / 2)

        def lowered(env):
            p = carry(None)(env)
            p[2] = TABLE_Z + 0.02
            return p

        def retreat(env):
            p = env.eef_pos()
            return np.array([p[0], p[1], SAFE_Z])

        return [
            Waypoint("above", above_handle(0.08), -1.0, yaw=grasp_yaw, tol=0.012, max_steps=45),
            Waypoint("descend", above_handle(0.0), -1.0, yaw=grasp_yaw, tol=0.006, max_steps=30, speed=0.6),
            Waypoint("close", above_handle(0.0), 1.0, min_steps=8, max_steps=8, tol=1.0),
            Waypoint("lift", lift, 1.0, tol=0.02, max_steps=20),
            Waypoint("carry", carry(SAFE_Z), 1.0, yaw=align_yaw, tol=0.008, max_steps=50),
            Waypoint("align", carry(PEG_TOP_Z + 0.045), 1.0, yaw=align_yaw, tol=0.004, max_steps=25, speed=0.5),
            Waypoint("lower", lowered, 1.0, yaw=align_yaw, tol=0.01, max_steps=40, speed=0.5, end_on_stall=True),
            Waypoint("release", lambda env: env.eef_pos(), -1.0, min_steps=5, max_steps=5, tol=1.0),
            Waypoint("retreat", retreat, -1.0, tol=0.02, max_steps=30),
        ]


SPEC = TaskSpec(
    "square", INSTRUCTION, HORIZON, make_robosuite_env, SquareExpert,
    disruptions=(
        Disruption("position", f"the square peg at a random spot in x {PEG_X_RANGE}, y {PEG_Y_RANGE} (m) "
                   "instead of fixed at (0.23, 0.10)", make_peg_position_env),
    ),
)
