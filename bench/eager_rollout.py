"""The public reference implementation's rollout style, kept for benchmarks and for the engine's
agreement test: every chunk decodes all frames and round-trips them through host numpy, every
trajectory runs to the horizon, and the success detector scores the stored videos afterwards.

The library's loop is wmpo.rollout.engine.ImaginationEngine; this one only borrows its parts.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from wmpo.data.batch import TrajectoryBatch
from wmpo.rollout.chunk import PhaseTimer
from wmpo.rollout.engine import ImaginationEngine
from wmpo.utils.frames import model_to_uint8, uint8_to_model


@torch.no_grad()
def rollout_eager_reference(
    engine: ImaginationEngine,
    initial_frames: torch.Tensor,
    instructions: list[str] | str,
    max_steps: int | None = None,
    temperature: float | None = None,
    *,
    seed: int | None = None,
) -> tuple[TrajectoryBatch, dict[str, Any]]:
    """The public reference implementation's style, for benchmarks: every chunk decodes all
    frames and round-trips them through host numpy, every trajectory runs to the horizon, and
    the success detector scores the stored videos afterwards.
    """
    cfg = engine.cfg
    temperature = cfg.temperature if temperature is None else float(temperature)
    max_steps = int(max_steps or cfg.max_steps)
    T = math.ceil(max_steps / engine.K)
    t_wall = time.perf_counter()
    timer = PhaseTimer(True, engine.device)
    pool, instr = engine.prepare_pool(initial_frames, instructions)
    B = pool.shape[0]
    engine.check_detector(B, "one row per initial frame")
    videos: list[np.ndarray] = []  # host uint8 [B, K, H, W, 3] per chunk
    obs_l, tok_l, logp_l = [], [], []
    # a seed from the global RNG when none is given, so unseeded calls differ but stay reproducible
    run_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    fork_devices = [engine.device] if engine.device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(run_seed)
        cur = pool.cpu().numpy()
        engine.env_reset(uint8_to_model(pool))
        timer.start()
        for _ in range(T):
            frames_in = uint8_to_model(torch.from_numpy(cur).to(engine.device))
            timer.lap("host")
            tokens, logp = engine.policy.sample(frames_in, instr, temperature)
            actions = engine.runner.to_wm_actions(tokens).float()
            obs_l.append(torch.from_numpy(cur))
            tok_l.append(tokens.cpu())
            logp_l.append(logp.float().cpu())
            timer.lap("policy")
            lat = engine.wm_env.step(actions, decode=False)
            timer.lap("world_model")
            frames = engine.wm_env.decode(lat)
            timer.lap("vae")
            video = model_to_uint8(frames).cpu().numpy()
            videos.append(video)
            cur = video[:, -1]
            timer.lap("host")
        # score afterwards, chunk by chunk from the stored host videos
        success = torch.zeros(B, dtype=torch.bool)
        length = torch.full((B,), min(T * engine.K, max_steps), dtype=torch.int64)
        if engine.detector is not None:
            engine.detector.reset_slots(torch.ones(B, dtype=torch.bool, device=engine.device), uint8_to_model(pool))
            for s, video in enumerate(videos):
                ok, first = engine.detector.update(uint8_to_model(torch.from_numpy(video).to(engine.device)))
                ok, first = ok.cpu(), first.cpu().to(torch.int64)
                first_g = torch.where(first >= engine.K, first, s * engine.K + first)
                new = ok & ~success & (first_g < max_steps)
                length = torch.where(new, first_g + 1, length)
                success |= ok
            timer.lap("reward")
    wall = time.perf_counter() - t_wall
    steps = torch.where(success, (length + engine.K - 1) // engine.K, torch.full_like(length, T))
    batch = TrajectoryBatch(
        obs=torch.stack(obs_l, 1),
        instr=instr.cpu(),
        tokens=torch.stack(tok_l, 1),
        old_logp=torch.stack(logp_l, 1),
        chunk_mask=torch.arange(T)[None, :] < steps[:, None],
        success=success,
        group=torch.arange(B),
        length=length,
    )
    stats = {
        "chunks": T,
        "frames_computed": T * B * engine.K,
        "frames_kept": int(length.sum()),
        "success_rate": float(success.float().mean()),
        "wall_s": wall,
        "frames_per_sec": T * B * engine.K / wall if wall > 0 else float("nan"),
        "time": dict(timer.t),
    }
    return batch, stats
