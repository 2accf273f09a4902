"""`wmpo wm-eval`: world-model fidelity. From each held-out episode's first frame, replay its real actions
chunk by chunk in the WorldModelEnv; per-frame PSNR and SSIM against the real frames vs horizon; an mp4
per episode with real | imagined side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from wmpo.data.clips import episode_frames, normalize_actions
from wmpo.data.loader import check_action_stats, same_action_stats
from wmpo.models.vae import FrameVAE, psnr
from wmpo.models.world_model import WorldModel
from wmpo.rollout.world_model_env import WorldModelEnv
from wmpo.utils.frames import model_to_uint8
from wmpo.utils.logging import progress


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM per image of frames [N, 3, H, W] in [-1, 1] (uniform window, data range 1) -> [N]."""
    x, y = (a.float().clamp(-1, 1) + 1) / 2, (b.float().clamp(-1, 1) + 1) / 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    pool = lambda z: F.avg_pool2d(z, window, 1, window // 2, count_include_pad=False)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


@torch.no_grad()
def evaluate_world_model(vae: FrameVAE, world_model: WorldModel, episodes: Sequence, action_stats: dict | None = None, *,
                         steps: int | Sequence[float] = 30, device: torch.device | str | None = None,
                         max_frames: int | None = None, video_dir: str | Path | None = None, fps: int = 10,
                         seed: int = 0) -> dict:
    """-> {"psnr": [per horizon frame], "ssim": [...], "psnr_mean", "ssim_mean", "num_episodes", "videos"}.

    Actions are normalized with the world model's own statistics (`world_model.action_stats`, from its
    checkpoint), not the evaluated episodes': those are what it was trained on. `action_stats` is only
    needed for a model without them, and must equal them otherwise.
    All episodes are rolled out as one batch, truncated to the shortest one (and max_frames)."""
    own = world_model.action_stats
    if own is None and action_stats is None:
        raise ValueError("action_stats: the world model has none (a checkpoint from an older train-wm without "
                         "action_stats.json beside it); pass the q01/q99 it was trained with")
    if own is not None and action_stats is not None and not same_action_stats(own, action_stats):
        raise ValueError("action_stats: expected the world model's own statistics (or None), got different ones")
    action_stats = own if own is not None else check_action_stats("action_stats", action_stats, world_model.cfg.action_dim)
    device = torch.device(device) if device is not None else next(world_model.parameters()).device
    K = world_model.cfg.chunk_len
    T = min(len(e) for e in episodes)
    if max_frames is not None:
        T = min(T, max_frames)
    n_chunks = T // K
    if n_chunks < 1:
        raise ValueError(f"episodes: expected at least chunk_len={K} actions each, shortest has {T}")
    real = torch.stack([episode_frames(e, vae.frame_size)[: n_chunks * K + 1] for e in episodes]).to(device)  # [B, T+1, 3, H, W]
    acts = torch.stack([normalize_actions(e.actions[: n_chunks * K], action_stats) for e in episodes]).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    env = WorldModelEnv(vae, world_model, steps=steps, device=device, generator=gen)
    env.reset(real[:, 0])
    imagined = [real[:, :1].float()]
    for k in progress(range(n_chunks), total=n_chunks, desc="wm-eval"):
        imagined.append(env.step(acts[:, k * K:(k + 1) * K]).float())
    imag = torch.cat(imagined, 1)  # [B, T+1, ...]
    B, L = imag.shape[:2]
    p = psnr(imag[:, 1:].reshape(-1, *imag.shape[2:]), real[:, 1:].reshape(-1, *real.shape[2:])).view(B, L - 1)
    s = ssim(imag[:, 1:].reshape(-1, *imag.shape[2:]), real[:, 1:].reshape(-1, *real.shape[2:])).view(B, L - 1)
    res = {"psnr": p.mean(0).tolist(), "ssim": s.mean(0).tolist(), "psnr_mean": p.mean().item(),
           "ssim_mean": s.mean().item(), "num_episodes": B, "horizon": L - 1, "videos": []}
    if video_dir is not None:
        import imageio.v2 as imageio

        vd = Path(video_dir)
        vd.mkdir(parents=True, exist_ok=True)
        side = model_to_uint8(torch.cat([real.float(), imag], dim=-1)).cpu().numpy()  # [B, L, H, 2W, 3]
        for b in range(B):
            path = vd / f"episode_{b:03d}.mp4"
            imageio.mimwrite(str(path), list(side[b]), fps=fps, macro_block_size=1)
            res["videos"].append(str(path))
    return res
