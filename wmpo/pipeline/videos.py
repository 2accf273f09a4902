"""Side-by-side mp4s: the same policy from the same initial state, in the real simulator (left) and
imagined by the world model (right)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.rollout.engine import ImaginationEngine, RolloutConfig


@torch.no_grad()
def imagine_frames(wm_env: Any, policy: Any, tokenizer: Any, first_frame: np.ndarray, instruction: str, steps: int,
                   device: torch.device, seed: int = 0) -> np.ndarray:
    """Greedy policy inside the world model from one real first frame -> uint8 [steps+1, H, W, 3]
    (the imagination engine's fixed rollout, every frame recorded)."""
    engine = ImaginationEngine(wm_env, policy, None, tokenizer, RolloutConfig(num_slots=1))
    first = torch.as_tensor(np.ascontiguousarray(first_frame))[None].to(device)
    _, stats = engine.rollout_fixed(first, instruction, max_steps=steps, temperature=0.0, seed=seed, early_exit=False,
                                    record_video=True)
    return stats["video"][0, : steps + 1].cpu().numpy()


def real_frames(task: str, state: np.ndarray, env_policy: Any, instruction: str, steps: int, image_size: int) -> np.ndarray:
    """Greedy policy in the real simulator from `state` -> uint8 [<= steps+1, H, W, 3] (stops at success)."""
    from wmpo.sim import make_env

    env = make_env(task, image_size=image_size)
    try:
        frames = [env.reset_to(state)]
        while len(frames) - 1 < steps:
            chunk = env_policy(frames[-1][None], [instruction])[0]
            for a in chunk:
                f, _, done, info = env.step(a)
                frames.append(f)
                if done or info.get("success") or len(frames) - 1 >= steps:
                    break
            if done or info.get("success"):
                break
    finally:
        env.close()
    return np.stack(frames)


def write_side_by_side(path: Path, left: np.ndarray, right: np.ndarray, fps: int = 20) -> None:
    import imageio.v2 as imageio

    n = max(len(left), len(right))
    pad = lambda v: np.concatenate([v, np.repeat(v[-1:], n - len(v), 0)], 0) if len(v) < n else v  # noqa: E731
    both = np.concatenate([pad(left), pad(right)], axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(str(path), list(both), fps=fps, macro_block_size=1)


def imagined_vs_real(ctx: Any) -> dict:
    from wmpo.sim import TASKS

    cfg = ctx.cfg
    spec = TASKS[cfg.task]
    policy, tok = ctx.load_policy(ctx.output("wmpo")["checkpoint"])
    policy.eval()
    wm_env = ctx.world_model_env(ctx.output("wm_finetune")["path"])
    states, frames = ctx.initial_frames("eval", cfg.eval_episodes)
    steps = min(cfg.imagined_horizon or spec.horizon, cfg.max_episode_steps or spec.horizon)
    env_policy = ctx.env_policy(policy, tok, None)
    paths = []
    for i in range(min(cfg.num_videos, len(states))):
        real = real_frames(cfg.task, states[i], env_policy, spec.instruction, steps, cfg.image_size)
        imag = imagine_frames(wm_env, policy, tok, frames[i], spec.instruction, len(real) - 1, ctx.device)
        p = ctx.out / "videos" / "imagined_vs_real" / f"eval{i:03d}.mp4"
        write_side_by_side(p, real, imag)
        paths.append(str(p))
    return {"videos": paths}
