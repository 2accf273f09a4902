"""TaskEnv: one robosuite task with cheap agentview rendering, seeded resets and state restore."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from wmpo.data.episode import ACTION_DIM
from wmpo.sim.render import CameraRenderer
from wmpo.sim.spec import TaskSpec


def state_seed(state: np.ndarray) -> int:
    """A seed derived from every byte of a flattened simulator state (same state -> same seed)."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(state).tobytes(), digest_size=7).digest(), "little")


def reseed(raw: Any, seed: int) -> None:
    """Point every random generator a robosuite env draws its initial state from at `seed`."""
    rng = np.random.default_rng(int(seed))
    raw.rng = rng
    stack = [getattr(raw, "placement_initializer", None)]
    while stack:
        sampler = stack.pop()
        if sampler is None:
            continue
        if hasattr(sampler, "rng"):
            sampler.rng = rng
        stack.extend(getattr(sampler, "samplers", {}).values())


class TaskEnv:
    """A task env: frames are uint8 [H, W, 3] agentview images (None when image_size == 0).

    Reward is sparse: 1.0 at steps where the task is solved. `done` is True at success or when the
    horizon is reached.
    """

    def __init__(self, spec: TaskSpec, image_size: int = 64, seed: int = 0, camera: str = "agentview"):
        self.spec = spec
        self.disruption = spec.disruption
        """the task variant (see wmpo.sim.tasks.DISRUPTIONS; None: the nominal task)"""
        self.image_size = int(image_size)
        self.instruction = spec.instruction
        self.horizon = spec.horizon
        self.raw = spec.make_robosuite_env(
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            ignore_done=True,
            hard_reset=False,  # keeps the MjModel (and the renderer bound to it) across resets
        )
        self._seeds = np.random.default_rng(int(seed))
        self.renderer = None
        if self.image_size > 0:
            self.renderer = CameraRenderer(self.raw.sim.model._model, self.raw.sim.data._data, self.image_size, camera)
        self._expert = None
        self._noise = None  # ExpertNoise: perturbs expert_action() (world-model pretraining corpus)
        self._perturber = None
        self.t = 0

    def set_expert_noise(self, noise) -> None:
        """Perturb `expert_action()` with `noise` (an ExpertNoise, or None for the clean expert) from
        the next reset on; each episode's perturbation is drawn from its reset seed."""
        self._noise = noise
        self._perturber = None

    # ---- episode control --------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray | None:
        """New initial state from the task's D0 distribution; same `seed` -> same state."""
        if seed is None:
            seed = int(self._seeds.integers(0, 2**31 - 1))
        reseed(self.raw, seed)
        self.raw.reset()
        return self._after_reset(seed)

    def reset_to(self, state: np.ndarray) -> np.ndarray | None:
        """Restore a flattened simulator state (from `get_state`); the frame is bit-identical for
        the same state. Whatever the state does not hold (e.g. the `position` disruption's peg) is
        drawn from a seed derived from the state, so it too is the same for the same state."""
        state = np.asarray(state, dtype=np.float64)
        want = self.state_dim
        if state.shape != (want,):
            raise ValueError(f"state: expected shape ({want},), got {state.shape}")
        seed = state_seed(state)
        reseed(self.raw, seed)
        self.raw.reset()
        self.raw.sim.set_state_from_flattened(state)
        self.raw.sim.forward()
        # controllers read the new joint state on their next update
        for robot in self.raw.robots:
            controller = getattr(robot, "composite_controller", None)
            if controller is not None:
                controller.update_state()
                controller.reset()
        return self._after_reset(seed)

    def _after_reset(self, seed: int):
        self.t = 0
        if self._expert is not None:
            self._expert.reset(self.raw)
        if self._noise is not None:
            from wmpo.sim.expert_noise import ActionPerturber

            self._perturber = ActionPerturber(self._noise, seed)
        return self.render()

    def step(self, action: np.ndarray):
        """-> (frame, reward, done, info{"success", "t"}). The action is rounded to float32 (what
        the trajectory store keeps), so replaying stored actions reproduces an episode exactly."""
        action = np.asarray(action, dtype=np.float32).astype(np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action: expected shape ({ACTION_DIM},), got {action.shape}")
        self.raw.step(action)
        self.t += 1
        success = self.is_success()
        done = success or self.t >= self.horizon
        return self.render(), float(success), bool(done), {"success": success, "t": self.t}

    # ---- queries ------------------------------------------------------------------------
    def render(self) -> np.ndarray | None:
        return None if self.renderer is None else self.renderer.render()

    def get_state(self) -> np.ndarray:
        """float64 [S] = [time, qpos, qvel] (robomimic's flattened MjSimState)."""
        return np.asarray(self.raw.sim.get_state().flatten(), dtype=np.float64)

    @property
    def state_dim(self) -> int:
        m = self.raw.sim.model._model
        return 1 + int(m.nq) + int(m.nv)

    def is_success(self) -> bool:
        return bool(self.raw._check_success())

    def expert_action(self) -> np.ndarray:
        """The task's scripted expert's action for the current state (expert created lazily and
        reset with the env)."""
        if self._expert is None:
            self._expert = self.spec.make_expert()
            self._expert.reset(self.raw)
        action = np.asarray(self._expert.act(self.raw), dtype=np.float64)
        return action if self._perturber is None else self._perturber(action)

    def expert_noise_summary(self) -> dict | None:
        """What the current episode's perturbation drew and did (None for the clean expert)."""
        return None if self._perturber is None else self._perturber.summary()

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        try:
            self.raw.close()
        except Exception:  # robosuite close can fail on a half-built env; nothing to release then
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_env(task: str, image_size: int = 64, seed: int = 0, camera: str = "agentview",
             disruption: str | None = None) -> TaskEnv:
    """A TaskEnv for a registered task name (see wmpo.sim.TASKS), optionally one of its disruptions
    (see wmpo.sim.tasks.DISRUPTIONS)."""
    from wmpo.sim.tasks import get_task

    return TaskEnv(get_task(task, disruption=disruption), image_size=image_size, seed=seed, camera=camera)
