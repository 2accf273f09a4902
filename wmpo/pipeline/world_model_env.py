"""load_world_model_env(run_dir): a finished `wmpo run` folder as a gymnasium-style vector env.

It takes the run's VAE (stage `vae`), its fine-tuned world model (stage `wm_finetune`) and its
reward model (stage `reward`) from the stage markers, the sampler settings from config.json, and,
unless given, the initial frames the run cached (data/initial_<split>_<n>.npz). See
wmpo.rollout.gym_env.WorldModelVecEnv for the env itself and docs/rollout.md for the API.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from wmpo.pipeline.stages import StageRunner
from wmpo.utils.checkpoint import load_json

NEEDED = (("vae", "path"), ("wm_finetune", "path"), ("reward", "reward_path"))


def _stage_output(run: Path, stage: str, key: str) -> str:
    marker = run / "stages" / f"{stage}.json"
    if not marker.is_file():
        raise ValueError(f"run_dir: {run} has no finished stage {stage!r} ({marker} missing); run `wmpo run` "
                         f"at least through {stage}")
    value = StageRunner(run, log=lambda _: None).load_marker(stage).get(key)
    if not isinstance(value, str):
        raise ValueError(f"run_dir: stage marker {marker} has no {key!r}")
    return value


def _cached_initial_frames(run: Path, split: str) -> np.ndarray:
    found = sorted((run / "data").glob(f"initial_{split}_*.npz"))
    if not found:
        raise ValueError(f"initial_frames: {run}/data holds no initial_{split}_*.npz (the run caches them when it "
                         f"evaluates or rolls out); pass initial_frames= (uint8 [N, H, W, 3])")
    return np.load(found[-1])["frames"]


def load_world_model_env(run_dir, *, num_envs: int, max_chunks: Optional[int] = None, initial_frames=None,
                         split: str = "train", action_space: str = "normalized", steps: Optional[int] = None,
                         device: Optional[str | torch.device] = None):
    """-> WorldModelVecEnv of the run in `run_dir` with num_envs rows. max_chunks: the episode length in
    action chunks (default: the run's imagined_horizon / chunk_len). steps: Euler steps per chunk
    (default: the run's sampler_steps). device: default CPU."""
    from wmpo.models.reward import IncrementalSuccess, load_reward
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel
    from wmpo.rollout.gym_env import WorldModelVecEnv
    from wmpo.rollout.world_model_env import WorldModelEnv

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise ValueError(f"run_dir: {run} is not a `wmpo run` folder (no config.json)")
    cfg = load_json(run / "config.json", what="run config")
    vae_p, wm_p, reward_p = (_stage_output(run, stage, key) for stage, key in NEEDED)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    vae = FrameVAE.from_checkpoint(vae_p).to(dev).eval()
    wm = WorldModel.from_checkpoint(wm_p).to(dev).eval()
    reward = load_reward(reward_p, dev)
    wcfg = cfg.get("world_model", {})
    wm_env = WorldModelEnv(vae, wm, steps=int(steps or cfg.get("sampler_steps", 30)),
                           num_context=wcfg.get("num_context"), t_context=wcfg.get("t_context"), device=dev)
    if max_chunks is None:
        horizon = cfg.get("imagined_horizon")
        if not horizon:
            raise ValueError("max_chunks: the run's imagined_horizon is not set (it uses the task's horizon); "
                             "pass max_chunks=")
        max_chunks = math.ceil(int(horizon) / wm.cfg.chunk_len)
    frames = initial_frames if initial_frames is not None else _cached_initial_frames(run, split)
    return WorldModelVecEnv(wm_env, IncrementalSuccess(reward, num_envs, dev), frames, num_envs=num_envs,
                            max_chunks=max_chunks, action_space=action_space)
