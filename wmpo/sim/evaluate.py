"""Success rate of a policy in the real simulator on a task's evaluation initial states."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from wmpo.sim.collect import Policy, make_starts, run_episodes


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a_success: "Sequence[bool]", b_success: "Sequence[bool]") -> dict:
    """Exact (binomial) two-sided McNemar test of two policies evaluated on the same initial states.

    a_success[i], b_success[i]: outcomes from state i. Only discordant states count: n01 (a failed,
    b succeeded) and n10; under H0 each discordant state is a fair coin. -> {"n01", "n10", "p"}."""
    a, b = np.asarray(a_success, bool), np.asarray(b_success, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a_success, b_success: expected two [n] outcome lists over the same states, got {a.shape} and {b.shape}")
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    n, k = n01 + n10, min(n01, n10)
    if n == 0:
        return {"n01": 0, "n10": 0, "p": 1.0}
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return {"n01": n01, "n10": n10, "p": float(min(1.0, 2 * tail))}


def paired_outcomes(a: "EvalResult", b: "EvalResult") -> tuple[list[bool], list[bool]]:
    """Outcomes of two evaluations on their common initial-state indices, aligned by index."""
    da = {e.index: e.success for e in a.episodes}
    db = {e.index: e.success for e in b.episodes}
    common = sorted(set(da) & set(db))
    return [da[i] for i in common], [db[i] for i in common]


@dataclass
class EpisodeResult:
    index: int
    """index of the initial state in the split"""
    success: bool
    length: int
    """steps taken (finish step for successes)"""


@dataclass
class EvalResult:
    task: str
    split: str
    n: int
    success_rate: float
    ci95: tuple[float, float]
    mean_success_length: float
    """mean episode length over successful episodes (nan when none)"""
    episodes: list[EpisodeResult] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    seconds: float = 0.0
    disruption: str | None = None
    """the task variant evaluated (see wmpo.sim.tasks.DISRUPTIONS; None: the nominal task)"""

    def summary(self) -> str:
        lo, hi = self.ci95
        variant = "" if self.disruption is None else f", disruption {self.disruption}"
        return (f"{self.task} [{self.split}{variant}, n={self.n}]: success {self.success_rate:.3f} "
                f"(95% CI {lo:.3f}-{hi:.3f}), mean success length {self.mean_success_length:.1f}")


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 20) -> None:
    """uint8 [T, H, W, 3] -> mp4 (imageio-ffmpeg, H.264)."""
    import imageio.v2 as imageio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(str(path), list(frames), fps=fps, codec="libx264", macro_block_size=1,
                     ffmpeg_log_level="error")


def evaluate(policy: Policy, task: str, split: str = "eval", n: int = 128, num_workers: int = 1,
             image_size: int = 64, video_dir: str | os.PathLike | None = None, n_videos: int = 4,
             init_states: np.ndarray | None = None, max_steps: int | None = None,
             show_progress: bool = True, disruption: str | None = None, first_index: int = 0) -> EvalResult:
    """Run `policy` from the first `n` initial states of `split` (or the given `init_states`);
    write mp4s of the first `n_videos` episodes (by start index) to `video_dir`. `max_steps` caps
    episodes below the task horizon (for smoke tests). `disruption`: evaluate on this variant of the
    task (see wmpo.sim.tasks.DISRUPTIONS) from the same initial states. `first_index`: the index of
    init_states[0] in a larger set (a rank's share, wmpo.sim.evaluate_ranks): episodes and videos
    carry first_index + their position."""
    from wmpo.sim.initial_states import get_initial_states
    from wmpo.sim.tasks import get_task
    from wmpo.sim.vec_env import VecEnv
    from wmpo.utils.logging import progress

    get_task(task, disruption=disruption)  # a bad task / disruption fails before any work
    if init_states is None:
        init_states = get_initial_states(task, split, n)
    starts = make_starts(init_states=init_states)
    t0 = time.time()
    results: list[EpisodeResult] = []
    videos: list[str] = []
    venv = VecEnv(task, num_envs=min(num_workers, len(starts)), image_size=image_size, seed=0, disruption=disruption)
    try:
        it = run_episodes(venv, policy, starts, task, max_steps=max_steps)
        desc = f"eval {task}" + (f" ({disruption})" if disruption else "")
        for start, ep in progress(it, total=len(starts), desc=desc, disable=None if show_progress else True):
            index = first_index + start.index
            results.append(EpisodeResult(index=index, success=ep.success, length=len(ep)))
            if video_dir is not None and index < n_videos and image_size > 0:
                tag = "success" if ep.success else "fail"
                variant = "" if disruption is None else f"{disruption}_"
                path = Path(video_dir) / f"{task}_{variant}{split}_{index:03d}_{tag}.mp4"
                write_video(path, ep.frames)
                videos.append(str(path))
    finally:
        venv.close()
    return summarize(task, split, results, videos, time.time() - t0, disruption)


def summarize(task: str, split: str, results: list[EpisodeResult], videos: list[str], seconds: float,
              disruption: str | None = None) -> EvalResult:
    """The EvalResult of a set of episodes (any order; sorted by start index)."""
    results = sorted(results, key=lambda r: r.index)
    k = sum(r.success for r in results)
    lengths = [r.length for r in results if r.success]
    return EvalResult(
        task=task, split=split, n=len(results), success_rate=k / max(1, len(results)),
        ci95=wilson_interval(k, len(results)),
        mean_success_length=float(np.mean(lengths)) if lengths else float("nan"),
        episodes=results, videos=sorted(videos), seconds=seconds, disruption=disruption,
    )


def expert_success(task: str, n: int = 100, first_seed: int = 0, image_size: int = 0,
                   disruption: str | None = None) -> dict:
    """Run the scripted expert from D0 seeds first_seed..first_seed+n-1 in one process (no
    rendering by default), on the nominal task or one of its disruptions ->
    {"successes", "n", "mean_success_length", "steps_per_second", "failed_seeds"}."""
    from wmpo.sim.env import make_env

    env = make_env(task, image_size=image_size, disruption=disruption)
    wins, lengths, failed, steps, t0 = 0, [], [], 0, time.time()
    try:
        for seed in range(first_seed, first_seed + n):
            env.reset(seed)
            info = {"success": False}
            for _ in range(env.horizon):
                *_, done, info = env.step(env.expert_action())
                steps += 1
                if done:
                    break
            if info["success"]:
                wins += 1
                lengths.append(env.t)
            else:
                failed.append(seed)
    finally:
        env.close()
    return {"successes": wins, "n": n, "mean_success_length": float(np.mean(lengths)) if lengths else float("nan"),
            "steps_per_second": steps / max(1e-9, time.time() - t0), "failed_seeds": failed}


if __name__ == "__main__":
    import sys

    # python -m wmpo.sim.evaluate <task>[:<disruption>] [n] [first_seed] [image_size]: scripted-expert success rate
    args = sys.argv[1:]
    name, _, variant = args[0].partition(":")
    out = expert_success(name, *(int(a) for a in args[1:4]), disruption=variant or None)
    print(out)
