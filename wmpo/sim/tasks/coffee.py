"""coffee: put the pod into the holder, then close the holder's hinged lid."""
from __future__ import annotations

import numpy as np
from robosuite.models.objects import BoxObject, CompositeBodyObject, CylinderObject
from robosuite.utils.mjcf_utils import array_to_string

from wmpo.sim.spec import TaskSpec
from wmpo.sim.tasks._waypoints import TableTaskEnv, Waypoint, WaypointExpert, build_env, pick_and_place, walled_box

INSTRUCTION = "Put the coffee pod into the holder and close the lid"
HORIZON = 256

# Holder: a square cup (floor + four walls); the lid is hinged on the cup's far (+x) edge.
CUP_INNER_HALF = 0.036
WALL_HALF = 0.004
CUP_OUTER_HALF = CUP_INNER_HALF + 2 * WALL_HALF
FLOOR_HALF_Z = 0.004
WALL_HALF_Z = 0.022
CUP_HALF_Z = FLOOR_HALF_Z + WALL_HALF_Z  # holder origin at the middle of floor + walls
FLOOR_TOP_Z = -CUP_HALF_Z + 2 * FLOOR_HALF_Z
RIM_Z = CUP_HALF_Z
LID_HALF = CUP_OUTER_HALF
LID_HALF_Z = 0.004
LID_OPEN = 1.95  # rad: past vertical, resting on the joint limit
LID_CLOSED_TOL = 0.08  # rad
# Pod: a small cylinder
POD_RADIUS = 0.017
POD_HALF_Z = 0.017

# D0-like initial distribution (relative to the table centre)
MACHINE_X, MACHINE_Y = (-0.02, 0.02), (0.06, 0.1)
POD_X, POD_Y = (-0.08, 0.0), (-0.16, -0.1)


def _machine_object():
    holder = walled_box("holder", CUP_OUTER_HALF, FLOOR_HALF_Z, CUP_INNER_HALF, WALL_HALF, WALL_HALF_Z, "floor",
                        rgba=[0.2, 0.2, 0.22, 1], density=4000.0)
    lid = BoxObject(name="lid", size=[LID_HALF, LID_HALF, LID_HALF_Z], rgba=[0.75, 0.75, 0.78, 1], density=300.0)
    hinge = {
        "name": "lid_hinge",
        "type": "hinge",
        "axis": "0 1 0",
        "pos": array_to_string([LID_HALF, 0, -LID_HALF_Z]),
        "limited": "true",
        "range": f"-0.05 {LID_OPEN}",
        "damping": "0.002",
        "armature": "0.0005",
    }
    return CompositeBodyObject(
        name="machine",
        objects=[holder, lid],
        object_locations=[[0, 0, 0], [0, 0, RIM_Z + LID_HALF_Z]],
        object_parents=[None, None],
        body_joints={lid.root_body: [hinge]},
    )


class Coffee(TableTaskEnv):
    """A pod and a holder with an open hinged lid; success when the pod is in the cup and the lid closed."""

    def _make_objects(self):
        self.machine = _machine_object()
        self.pod = CylinderObject(
            name="pod", size=[POD_RADIUS, POD_HALF_Z], rgba=[0.55, 0.3, 0.1, 1], density=500.0,
            friction=[1.5, 0.005, 0.0001],
        )
        sampler = self.per_object_sampler([(self.machine, MACHINE_X, MACHINE_Y, 0.0), (self.pod, POD_X, POD_Y, None)])
        return [self.machine, self.pod], sampler

    def _setup_references(self):
        super()._setup_references()
        self.holder_body_id = self.obj_body_id[self.machine.name]  # the holder is the machine root
        self.lid_joint = self.machine.naming_prefix + "lid_hinge"
        self.lid_qpos_addr = self.sim.model.get_joint_qpos_addr(self.lid_joint)

    def _reset_internal(self):
        for s in self.placement_initializer.samplers.values():
            s.rng = self.rng
        super()._reset_internal()

    def _reset_extra(self):
        self.sim.data.set_joint_qpos(self.lid_joint, LID_OPEN)

    def holder_pos(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.holder_body_id])

    def lid_angle(self) -> float:
        return float(self.sim.data.qpos[self.lid_qpos_addr])

    def hinge_pos(self) -> np.ndarray:
        return self.holder_pos() + np.array([LID_HALF, 0.0, RIM_Z])

    def pod_in_holder(self) -> bool:
        d = self.body_pos("pod") - self.holder_pos()
        inside = np.all(np.abs(d[:2]) < CUP_INNER_HALF - POD_RADIUS + 0.003)
        return bool(inside and d[2] < FLOOR_TOP_Z + POD_HALF_Z + 0.01)

    def _check_success(self):
        return self.pod_in_holder() and self.lid_angle() < LID_CLOSED_TOL


def make_robosuite_env(**kwargs):
    """robosuite kwargs pass through; robots="Panda" and the OSC_POSE controller are fixed."""
    return build_env(Coffee, HORIZON, **kwargs)


class CoffeeExpert(WaypointExpert):
    """Pod into the cup; then, gripper closed, go behind the open lid and push it over; press it shut."""

    def plan(self, env):
        def pod_target(env):
            # release with the pod bottom 3 cm above the floor: the fingers stay out of the cup
            return env.holder_pos() + np.array([0.0, 0.0, FLOOR_TOP_Z + POD_HALF_Z + 0.03])

        def rel_hinge(dx, dz):
            return lambda env: env.hinge_pos() + np.array([dx, 0.0, dz])

        lid_len = 2 * LID_HALF
        lid_moves = [
            Waypoint("lid:up", rel_hinge(0.0, lid_len + 0.05), 1.0, tol=0.02, min_steps=8, max_steps=50),
            Waypoint("lid:over", rel_hinge(0.075, lid_len + 0.04), 1.0, tol=0.015, max_steps=40),
            Waypoint("lid:behind", rel_hinge(0.075, 0.05), 1.0, tol=0.01, max_steps=40),
            Waypoint("lid:push", rel_hinge(-0.03, 0.05), 1.0, tol=0.01, max_steps=50, speed=0.5),
            Waypoint("lid:press", rel_hinge(-LID_HALF, 2 * LID_HALF_Z + 0.004), 1.0, tol=0.006, max_steps=40,
                     speed=0.5),
            Waypoint("lid:retreat", rel_hinge(-LID_HALF, 0.12), 1.0, tol=0.02, max_steps=40),
        ]
        return pick_and_place(
            "pod", "pod", np.array([0.0, 0.0, 0.007]), pod_target, fixed_grasp_yaw=0.0, align_tol=0.004,
        ) + lid_moves


SPEC = TaskSpec("coffee", INSTRUCTION, HORIZON, make_robosuite_env, CoffeeExpert)
