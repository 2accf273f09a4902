"""Simulated robosuite tasks, scripted experts, vectorized envs, initial states and evaluation.

Importing this package disables numba's JIT for the process (robosuite decorates its transform
utilities with numba): with numba compiling in the same process as an EGL context, MuJoCo frames
have come back as pure noise on fresh machines. It also defaults MUJOCO_GL to egl. Both must
happen before robosuite is imported, which is why they are at the top of this module.
"""
from __future__ import annotations

import os
import sys

os.environ["NUMBA_DISABLE_JIT"] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")


def _disable_numba_jit() -> None:
    """Also cover the case where numba / robosuite were imported before wmpo.sim."""
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.config.DISABLE_JIT = True
    macros = sys.modules.get("robosuite.macros")
    if macros is not None:
        macros.ENABLE_NUMBA = False
    if "robosuite.utils.transform_utils" in sys.modules and numba is not None:
        tu = sys.modules["robosuite.utils.transform_utils"]
        if hasattr(getattr(tu, "mat2quat", None), "py_func"):
            from wmpo.utils.logging import warn_once

            warn_once(
                "wmpo.sim.numba",
                "robosuite was imported (with numba JIT on) before wmpo.sim: frames may come back as noise. "
                "Import wmpo.sim first, or set NUMBA_DISABLE_JIT=1 in the environment.",
            )


def _headless_gl() -> None:
    """If mujoco was imported before wmpo.sim without MUJOCO_GL on a machine with no display, it
    picked GLFW, which cannot render headless: switch its context class to EGL."""
    gl = sys.modules.get("mujoco.gl_context")
    if gl is None or os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return
    if getattr(gl, "_MUJOCO_GL", "egl") in ("", "glfw", "enable", "enabled", "on", "true", "1") and "OpenGL" not in sys.modules:
        try:
            from mujoco.egl import GLContext

            gl.GLContext = GLContext
        except Exception:  # no EGL: leave mujoco's choice; rendering will report its own error
            pass


ROBOSUITE_STARTUP_NOISE = ("No private macro file found", "It is recommended to use a private macro file", "To setup, run:",
                           "Could not import robosuite_models", "Could not load the mink-based whole-body IK",
                           "Loading controller configuration from", "The config has defined for the controller")
"""robosuite's start-up messages (its optional setup, the default controller file it loads for every env, and
that file's parts for other robots' bodies, five lines per env for a Panda arm; none about wmpo's use of it)"""


def _quiet_robosuite_startup() -> None:
    """WMPO_QUIET_ROBOSUITE=1 (the `wmpo` command sets it; its worker processes inherit it): drop robosuite's
    start-up messages, which every worker process would print again. Other robosuite messages pass."""
    if os.environ.get("WMPO_QUIET_ROBOSUITE") != "1":
        return
    import logging

    logging.getLogger("robosuite_logs").addFilter(lambda rec: not str(rec.msg).startswith(ROBOSUITE_STARTUP_NOISE))


_quiet_robosuite_startup()
_disable_numba_jit()
_headless_gl()

from wmpo.sim.env import TaskEnv, make_env  # noqa: E402
from wmpo.sim.spec import Expert, TaskSpec  # noqa: E402
from wmpo.sim.tasks import TASKS, get_task  # noqa: E402

__all__ = ["TASKS", "Expert", "TaskEnv", "TaskSpec", "get_task", "make_env"]
