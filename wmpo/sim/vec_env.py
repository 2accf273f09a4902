"""VecEnv: N TaskEnvs in worker processes (multiprocessing spawn context), stepped in lockstep.

Each worker owns one TaskEnv (created with seed `seed + rank`) and answers commands over a pipe.
Workers run the same code as a single TaskEnv, so results are identical to one env driven with the
same seeds / states / actions. Scripted experts run inside the workers (`step_expert`).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from typing import Sequence

import numpy as np

from wmpo.data.episode import ACTION_DIM


def _worker(conn, task: str, image_size: int, seed: int, expert_noise: dict | None = None,
            disruption: str | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    env = None
    try:
        from wmpo.sim.env import make_env  # imports wmpo.sim first: numba JIT off, EGL

        env = make_env(task, image_size=image_size, seed=seed, disruption=disruption)
        if expert_noise is not None:
            from wmpo.sim.expert_noise import ExpertNoise

            env.set_expert_noise(ExpertNoise.from_dict(expert_noise))
        conn.send(("ok", (env.state_dim, env.instruction, env.horizon)))
        while True:
            cmd, arg = conn.recv()
            try:
                if cmd == "reset":
                    out = (env.reset(arg), env.get_state())
                elif cmd == "reset_to":
                    out = (env.reset_to(arg), env.get_state())
                elif cmd == "step":
                    frame, reward, done, info = env.step(arg)
                    out = (frame, reward, done, info["success"], arg, env.get_state())
                elif cmd == "step_expert":
                    action = env.expert_action()
                    frame, reward, done, info = env.step(action)
                    out = (frame, reward, done, info["success"], action, env.get_state())
                elif cmd == "get_state":
                    out = env.get_state()
                elif cmd == "expert_noise_summary":
                    out = env.expert_noise_summary()
                elif cmd == "close":
                    conn.send(("ok", None))
                    break
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                conn.send(("ok", out))
            except Exception as e:  # report to the parent, keep serving
                conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    except Exception as e:
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except Exception:
            pass
    finally:
        if env is not None:
            env.close()
        conn.close()


class VecEnv:
    """N task envs in lockstep. Frames uint8 [N, H, W, 3]; `mask` restricts a call to some envs
    (the others are left untouched and their entries in the result are zeros)."""

    def __init__(self, task: str, num_envs: int, image_size: int = 64, seed: int = 0, expert_noise=None,
                 disruption: str | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        from wmpo.sim.tasks import get_task

        get_task(task, disruption=disruption)  # a bad task / disruption fails here, not in a worker
        self.task, self.num_envs, self.image_size = task, int(num_envs), int(image_size)
        self.disruption = disruption
        """the task variant every worker runs (see wmpo.sim.tasks.DISRUPTIONS; None: nominal)"""
        self.expert_noise = expert_noise
        """ExpertNoise perturbing `step_expert` (None: the clean scripted expert)"""
        ctx = mp.get_context("spawn")
        self._conns, self._procs = [], []
        for rank in range(self.num_envs):
            parent, child = ctx.Pipe()
            noise = None if expert_noise is None else expert_noise.to_dict()
            p = ctx.Process(target=_worker, args=(child, task, self.image_size, seed + rank, noise, disruption),
                            daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)
        self._closed = False
        infos = [self._recv(i) for i in range(self.num_envs)]
        self.state_dim, self.instruction, self.horizon = infos[0]
        self.last_states = np.zeros((self.num_envs, self.state_dim))
        """float64 [N, S]: each env's simulator state after its latest reset / step"""

    # ---- plumbing -------------------------------------------------------------------------
    def _recv(self, i: int):
        try:
            status, out = self._conns[i].recv()
        except EOFError:
            self.close()
            raise RuntimeError(f"VecEnv worker {i} died (exit code {self._procs[i].exitcode})") from None
        if status != "ok":
            self.close()
            raise RuntimeError(f"VecEnv worker {i} failed: {out}")
        return out

    def _call(self, cmd: str, args: Sequence, mask: np.ndarray | None) -> list:
        if self._closed:
            raise RuntimeError("VecEnv is closed")
        idx = range(self.num_envs) if mask is None else np.flatnonzero(mask)
        for i in idx:
            self._conns[i].send((cmd, args[i]))
        results: list = [None] * self.num_envs
        for i in idx:
            results[i] = self._recv(i)
        return results

    def _mask(self, mask) -> np.ndarray | None:
        if mask is None:
            return None
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"mask: expected shape ({self.num_envs},), got {mask.shape}")
        return mask

    def _frames(self, frames: list) -> np.ndarray | None:
        if self.image_size <= 0:
            return None
        blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        return np.stack([blank if f is None else f for f in frames])

    # ---- env API ----------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int] | None = None, mask=None) -> np.ndarray | None:
        """Reset to D0 initial states drawn with `seeds` (one per env; None: each env's own stream)."""
        mask = self._mask(mask)
        if seeds is None:
            seeds = [None] * self.num_envs
        if len(seeds) != self.num_envs:
            raise ValueError(f"seeds: expected {self.num_envs} seeds, got {len(seeds)}")
        return self._after_reset(self._call("reset", [None if s is None else int(s) for s in seeds], mask))

    def reset_to(self, states: np.ndarray, mask=None) -> np.ndarray | None:
        """Restore flattened simulator states float64 [N, S]."""
        states = np.asarray(states, dtype=np.float64)
        if states.shape != (self.num_envs, self.state_dim):
            raise ValueError(f"states: expected shape ({self.num_envs}, {self.state_dim}), got {states.shape}")
        return self._after_reset(self._call("reset_to", list(states), self._mask(mask)))

    def _after_reset(self, results: list):
        for i, r in enumerate(results):
            if r is not None:
                self.last_states[i] = r[1]
        return self._frames([None if r is None else r[0] for r in results])

    def _unpack(self, results: list):
        n = self.num_envs
        frames = self._frames([None if r is None else r[0] for r in results])
        rewards = np.array([0.0 if r is None else r[1] for r in results], np.float32)
        dones = np.array([False if r is None else r[2] for r in results], bool)
        successes = np.array([False if r is None else r[3] for r in results], bool)
        actions = np.stack([np.zeros(ACTION_DIM) if r is None else np.asarray(r[4], np.float64) for r in results])
        assert actions.shape == (n, ACTION_DIM)
        for i, r in enumerate(results):
            if r is not None:
                self.last_states[i] = r[5]
        return frames, rewards, dones, successes, actions

    def step(self, actions: np.ndarray, mask=None):
        """actions float [N, 7] -> (frames [N,H,W,3], rewards [N], dones [N], successes [N])."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(f"actions: expected shape ({self.num_envs}, {ACTION_DIM}), got {actions.shape}")
        return self._unpack(self._call("step", list(actions), self._mask(mask)))[:4]

    def step_expert(self, mask=None):
        """Each env's scripted expert picks and executes its action ->
        (frames, rewards, dones, successes, actions [N, 7])."""
        return self._unpack(self._call("step_expert", [None] * self.num_envs, self._mask(mask)))

    def get_states(self, mask=None) -> np.ndarray:
        """float64 [N, S] (rows outside `mask` are zeros)."""
        res = self._call("get_state", [None] * self.num_envs, self._mask(mask))
        return np.stack([np.zeros(self.state_dim) if r is None else r for r in res])

    def expert_noise_summaries(self, mask=None) -> list:
        """Per env: what its current episode's expert perturbation drew and did (None: clean expert)."""
        return self._call("expert_noise_summary", [None] * self.num_envs, self._mask(mask))

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for c in self._conns:
            try:
                c.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self._conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
