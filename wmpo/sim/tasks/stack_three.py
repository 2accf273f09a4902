"""stack_three: stack three cubes in order (green on red, then blue on green)."""
from __future__ import annotations

import numpy as np
from robosuite.models.objects import BoxObject

from wmpo.sim.spec import Disruption, TaskSpec
from wmpo.sim.tasks._waypoints import TableTaskEnv, WaypointExpert, build_env, pick_and_place

INSTRUCTION = "Stack the three cubes: green on red, then blue on green"
HORIZON = 320

# cube half sizes (m): the bottom cube is the largest
HALF = {"red_cube": 0.025, "green_cube": 0.0225, "blue_cube": 0.02}
RGBA = {"red_cube": (0.85, 0.1, 0.1, 1), "green_cube": (0.1, 0.75, 0.15, 1), "blue_cube": (0.1, 0.25, 0.9, 1)}

# D0-like initial distribution: cube centres uniform in this box around the table centre, small yaw
X_RANGE = (-0.1, 0.1)
Y_RANGE = (-0.12, 0.12)
YAW_RANGE = (-np.pi / 8, np.pi / 8)


class StackThree(TableTaskEnv):
    """Three cubes on a table; success when green rests on red, blue rests on green, neither held."""

    def _make_objects(self):
        cubes = [BoxObject(name=n, size=[h, h, h], rgba=RGBA[n], density=500.0) for n, h in HALF.items()]
        self.cubes = {c.name: c for c in cubes}
        sampler = self.placement_sampler("CubeSampler", cubes, X_RANGE, Y_RANGE, YAW_RANGE, z_offset=0.002)
        return cubes, sampler

    def _on_top(self, upper: str, lower: str) -> bool:
        """`upper` rests on `lower`: in contact, centred within the lower cube, at the right height."""
        pu, pl = self.body_pos(upper), self.body_pos(lower)
        dz = pu[2] - pl[2]
        centred = np.all(np.abs(pu[:2] - pl[:2]) < HALF[lower])
        height_ok = abs(dz - (HALF[upper] + HALF[lower])) < 0.01
        return bool(centred and height_ok and self.check_contact(self.cubes[upper], self.cubes[lower]))

    def _check_success(self):
        if not (self._on_top("green_cube", "red_cube") and self._on_top("blue_cube", "green_cube")):
            return False
        return not (self.grasping(self.cubes["blue_cube"]) or self.grasping(self.cubes["green_cube"]))


TABLE_VISUAL_GEOM = "table_visual"
"""robosuite TableArena's visual table box (its top is the table-top the camera sees)"""
PLAIN_GRAY = (0.5, 0.5, 0.5, 1.0)


class StackThreeGrayTable(StackThree):
    """The `background` disruption (paper Fig. 4b): the ceramic-textured table drawn in plain gray.
    Only the table's visual geom changes (collision geoms, friction and everything else are as in
    StackThree)."""

    def _load_model(self):
        super()._load_model()
        geom = self.model.worldbody.find(f".//geom[@name='{TABLE_VISUAL_GEOM}']")
        if geom is None:
            raise RuntimeError(f"the table arena has no geom named {TABLE_VISUAL_GEOM!r}")
        geom.attrib.pop("material", None)
        geom.set("rgba", " ".join(str(c) for c in PLAIN_GRAY))


def make_robosuite_env(**kwargs):
    """robosuite kwargs pass through; robots="Panda" and the OSC_POSE controller are fixed."""
    return build_env(StackThree, HORIZON, **kwargs)


def make_gray_table_env(**kwargs):
    """The `background` disruption: as make_robosuite_env, on a plain gray table."""
    return build_env(StackThreeGrayTable, HORIZON, **kwargs)


GRASP_OFFSET = np.array([0.0, 0.0, 0.004])
"""grasp slightly above the cube centre so the fingertips clear the table"""


class StackThreeExpert(WaypointExpert):
    """Pick green, place it on red; pick blue, place it on green."""

    def plan(self, env):
        def on(lower, upper):
            def target(env):
                return env.body_pos(lower) + np.array([0.0, 0.0, HALF[lower] + HALF[upper] + 0.004])

            return target

        return pick_and_place(
            "green", "green_cube", GRASP_OFFSET, on("red_cube", "green_cube"),
            place_yaw=lambda env: env.body_yaw("red_cube"), avoid=("red_cube", "blue_cube"),
        ) + pick_and_place(
            "blue", "blue_cube", GRASP_OFFSET, on("green_cube", "blue_cube"),
            place_yaw=lambda env: env.body_yaw("green_cube"), avoid=("red_cube", "green_cube"),
        )


SPEC = TaskSpec(
    "stack_three", INSTRUCTION, HORIZON, make_robosuite_env, StackThreeExpert,
    disruptions=(Disruption("background", "the table-top drawn plain gray instead of its ceramic texture",
                            make_gray_table_env),),
)
