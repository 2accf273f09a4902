"""three_piece_assembly: insert a square ring into the base's socket, then a peg into the ring's hole."""
from __future__ import annotations

import numpy as np
from robosuite.models.objects import BoxObject, CompositeObject
from robosuite.utils.mjcf_utils import CustomMaterial

from wmpo.sim.spec import Disruption, TaskSpec
from wmpo.sim.tasks._waypoints import TableTaskEnv, WaypointExpert, build_env, pick_and_place, walled_box

INSTRUCTION = "Assemble the three pieces: put the orange ring into the base, then the blue peg into the ring"
HORIZON = 384

# Geometry (half sizes, m). Base: a plate with a square socket made of four low walls.
PLATE_HALF = 0.045
PLATE_HALF_Z = 0.005
SOCKET_HALF = 0.031  # inner half width of the socket
WALL_THICK_HALF = 0.004
WALL_HALF_Z = 0.006
BASE_HALF_Z = PLATE_HALF_Z + WALL_HALF_Z  # body origin at the middle of plate + walls
FLOOR_Z = -BASE_HALF_Z + 2 * PLATE_HALF_Z  # socket floor height relative to the base origin
# Piece 1: a square ring (outer half RING_HALF, square hole half HOLE_HALF).
RING_HALF = 0.024
HOLE_HALF = 0.013
RING_HALF_Z = 0.018
# Piece 2: a square peg that fits the ring's hole.
PEG_HALF = 0.008
PEG_HALF_Z = 0.03

# Where the pieces' origins are when assembled, relative to the base origin
RING_SEATED_DZ = FLOOR_Z + RING_HALF_Z
PEG_SEATED_DZ = FLOOR_Z + PEG_HALF_Z

# D0-like initial distribution (relative to the table centre)
BASE_X, BASE_Y, BASE_YAW = (-0.02, 0.02), (-0.02, 0.02), (-np.pi / 12, np.pi / 12)
RING_X, RING_Y, RING_YAW = (-0.06, 0.04), (0.12, 0.18), (-np.pi / 8, np.pi / 8)
PEG_X, PEG_Y, PEG_YAW = (-0.06, 0.04), (-0.18, -0.12), (-np.pi / 8, np.pi / 8)


BASE_GEOMS = ("plate", "wall_xp", "wall_xn", "wall_yp", "wall_yn")
"""the base's geoms (walled_box names them so)"""
BASE_RGBA = (0.35, 0.35, 0.38, 1)
WOOD_MATERIAL = "base_dark_wood"
"""the `texture` disruption's material for the base (robosuite's WoodDark texture)"""


def _base_object(wooden: bool = False):
    """The base; `wooden`: its visual geoms in dark wood (the `texture` disruption) instead of BASE_RGBA."""
    base = walled_box("base", PLATE_HALF, PLATE_HALF_Z, SOCKET_HALF, WALL_THICK_HALF, WALL_HALF_Z, "plate",
                      rgba=[1, 1, 1, 1] if wooden else list(BASE_RGBA),  # white: the wood texture shows unchanged
                      density=3000.0, material=WOOD_MATERIAL if wooden else None)
    if wooden:
        base.append_material(CustomMaterial(
            texture="WoodDark", tex_name="base_dark_wood_tex", mat_name=WOOD_MATERIAL,
            tex_attrib={"type": "cube"}, mat_attrib={"texrepeat": "1 1", "specular": "0.2", "shininess": "0.1"},
        ))
    return base


def _ring_object():
    side = (RING_HALF - HOLE_HALF) / 2
    mid = HOLE_HALF + side
    return CompositeObject(
        name="ring",
        total_size=[RING_HALF, RING_HALF, RING_HALF_Z],
        geom_types=["box"] * 4,
        geom_sizes=[[side, RING_HALF, RING_HALF_Z]] * 2 + [[HOLE_HALF, side, RING_HALF_Z]] * 2,
        geom_locations=[[mid, 0, 0], [-mid, 0, 0], [0, mid, 0], [0, -mid, 0]],
        geom_names=["side_xp", "side_xn", "side_yp", "side_yn"],
        geom_frictions=[[1.5, 0.005, 0.0001]] * 4,
        rgba=[0.95, 0.5, 0.1, 1],
        density=400.0,
        locations_relative_to_center=True,
    )


class ThreePieceAssembly(TableTaskEnv):
    """Base with a square socket, a ring that fits the socket, a peg that fits the ring's hole."""

    wooden_base = False
    """the `texture` disruption (ThreePieceAssemblyWoodenBase)"""

    def _make_objects(self):
        self.base = _base_object(wooden=self.wooden_base)
        self.ring = _ring_object()
        self.peg = BoxObject(
            name="peg", size=[PEG_HALF, PEG_HALF, PEG_HALF_Z], rgba=[0.15, 0.3, 0.9, 1], density=400.0,
            friction=[1.5, 0.005, 0.0001],
        )
        sampler = self.per_object_sampler([(self.base, BASE_X, BASE_Y, BASE_YAW), (self.ring, RING_X, RING_Y, RING_YAW),
                                           (self.peg, PEG_X, PEG_Y, PEG_YAW)])
        return [self.base, self.ring, self.peg], sampler

    def _reset_internal(self):
        # the composite sampler holds one sampler per object: let each follow env.rng
        for s in self.placement_initializer.samplers.values():
            s.rng = self.rng
        super()._reset_internal()

    def ring_seated(self) -> bool:
        d = self.body_pos("ring") - self.body_pos("base")
        return bool(np.all(np.abs(d[:2]) < SOCKET_HALF - RING_HALF + 0.002) and d[2] < RING_SEATED_DZ + 0.005)

    def peg_inserted(self) -> bool:
        d = self.body_pos("peg") - self.body_pos("ring")
        dz = self.body_pos("peg")[2] - self.body_pos("base")[2]
        return bool(np.all(np.abs(d[:2]) < HOLE_HALF - PEG_HALF + 0.002) and dz < PEG_SEATED_DZ + 0.005)

    def _check_success(self):
        return self.ring_seated() and self.peg_inserted() and not self.grasping(self.peg)


class ThreePieceAssemblyWoodenBase(ThreePieceAssembly):
    """The `texture` disruption (paper Fig. 4c): the base drawn in dark wood. Only the base's visual
    geoms change (its collision geoms, mass and everything else are as in ThreePieceAssembly)."""

    wooden_base = True


def make_robosuite_env(**kwargs):
    """robosuite kwargs pass through; robots="Panda" and the OSC_POSE controller are fixed."""
    return build_env(ThreePieceAssembly, HORIZON, **kwargs)


def make_wooden_base_env(**kwargs):
    """The `texture` disruption: as make_robosuite_env, with a dark wooden base."""
    return build_env(ThreePieceAssemblyWoodenBase, HORIZON, **kwargs)


class ThreePieceAssemblyExpert(WaypointExpert):
    """Ring into the socket (yaw matched to the base), then the peg into the ring."""

    def plan(self, env):
        def ring_target(env):
            return env.body_pos("base") + np.array([0.0, 0.0, RING_SEATED_DZ + 0.004])

        def peg_target(env):
            p = env.body_pos("ring")
            p[2] = env.body_pos("base")[2] + PEG_SEATED_DZ + 0.004
            return p

        return pick_and_place(
            "ring", "ring", np.array([0.0, 0.0, RING_HALF_Z - 0.01]), ring_target,
            place_yaw=lambda env: env.body_yaw("base"), avoid=("base", "peg"), align_tol=0.003,
        ) + pick_and_place(
            "peg", "peg", np.array([0.0, 0.0, PEG_HALF_Z - 0.012]), peg_target,
            avoid=("base", "ring"), align_tol=0.003,
        )


SPEC = TaskSpec(
    "three_piece_assembly", INSTRUCTION, HORIZON, make_robosuite_env, ThreePieceAssemblyExpert,
    disruptions=(
        Disruption("texture", "the base drawn in dark wood instead of plain dark gray", make_wooden_base_env),
    ),
)
