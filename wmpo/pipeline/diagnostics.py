"""Diagnostics of the learned simulator, measured before WMPO trusts it (issue: Table-1 on the CPU).

On real base-policy episodes that no model trained on (`heldout` rollouts, training initial states):

- open-loop fidelity: each episode's real actions replayed from its real first frame in the world
  model, PSNR / SSIM against the real frames vs horizon, next to two references: repeating the first
  frame (what a world model that learned nothing scores) and the VAE's own reconstruction (the
  ceiling any latent world model has);
- outcome agreement: the reward model's verdict on the imagined video vs the real outcome;
- the reward model's precision / recall / F1 on the real held-out episodes themselves;
- closed loop: the base policy's success rate inside the world model vs in the simulator, from the
  same initial states at the same temperature;
- action sensitivity: does the world model use its actions at all? The velocity error of its
  predicted frames on the latent pixels that move (the arm and what it carries) with the real actions
  and with other windows' actions; a world model that ignores them (ratio 1.0) gives WMPO groups whose
  imagined outcome does not depend on what the policy does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wmpo.data.clips import episode_frames, normalize_actions
from wmpo.models.reward import prf1
from wmpo.models.vae import psnr
from wmpo.models.world_model import generation_window
from wmpo.train.reward import video_scores
from wmpo.train.wm_eval import ssim
from wmpo.utils.frames import model_to_uint8

HORIZONS = (8, 16, 24, 32, 48, 64, 96, 128)
"""frames after the first at which fidelity is reported"""


def _mean_by_frame(values: np.ndarray, valid: np.ndarray) -> list[float | None]:
    """[B, T] values, [B, T] bool -> per-frame mean over the episodes still running (None past all)."""
    s, n = (values * valid).sum(0), valid.sum(0)
    return [float(a / b) if b > 0 else None for a, b in zip(s, n)]


@torch.no_grad()
def open_loop_fidelity(vae, world_model, episodes: Sequence, action_stats: dict, *, steps: int | Sequence[float],
                       device: torch.device, seed: int = 0, max_frames: int | None = None) -> dict[str, Any]:
    """Replay every episode's real actions from its real first frame (one batch, each to its own
    length; a chunk past an episode's end is fed zero actions and not scored).

    -> {"imagined": {"psnr": [per frame 1..T], "ssim": [...]}, "first_frame": {...}, "vae": {...},
        "at": {horizon: {"imagined_psnr", "first_frame_psnr", "vae_psnr", "imagined_ssim", ...}},
        "frames": uint8 [B, T+1, H, W, 3] imagined (not JSON; popped by callers), "lengths": [B]}."""
    from wmpo.rollout.world_model_env import WorldModelEnv

    K = world_model.cfg.chunk_len
    lengths = np.array([len(e) for e in episodes])
    T = int(lengths.max() if max_frames is None else min(lengths.max(), max_frames))
    n_chunks = -(-T // K)
    B, size = len(episodes), vae.frame_size
    real = torch.zeros(B, n_chunks * K + 1, 3, size, size)
    acts = torch.zeros(B, n_chunks * K, world_model.cfg.action_dim)
    for b, e in enumerate(episodes):
        f = episode_frames(e, size)[: n_chunks * K + 1]
        real[b, : len(f)] = f
        a = normalize_actions(e.actions[: n_chunks * K], action_stats)
        acts[b, : len(a)] = a
    valid = np.arange(1, n_chunks * K + 1)[None, :] <= np.minimum(lengths, T)[:, None]  # [B, n_chunks*K]
    gen = torch.Generator(device=device).manual_seed(seed)
    env = WorldModelEnv(vae, world_model, steps=steps, device=device, generator=gen)
    env.reset(real[:, 0].to(device))
    imag_u8 = [model_to_uint8(real[:, :1]).cpu()]
    m = {k: np.zeros((B, n_chunks * K)) for k in ("psnr", "ssim", "ff_psnr", "ff_ssim", "vae_psnr", "vae_ssim")}
    for k in range(n_chunks):
        new = env.step(acts[:, k * K:(k + 1) * K].to(device)).float().cpu()  # [B, K, 3, H, W]
        imag_u8.append(model_to_uint8(new))
        tgt = real[:, 1 + k * K: 1 + (k + 1) * K]
        rec = vae.decode(vae.encode(tgt.reshape(-1, 3, size, size).to(device))).float().cpu().clamp(-1, 1)
        first = real[:, :1].expand_as(tgt).reshape(-1, 3, size, size)
        flat_t, flat_n = tgt.reshape(-1, 3, size, size), new.reshape(-1, 3, size, size)
        sl = slice(k * K, (k + 1) * K)
        m["psnr"][:, sl] = psnr(flat_n, flat_t).view(B, K).numpy()
        m["ssim"][:, sl] = ssim(flat_n, flat_t).view(B, K).numpy()
        m["ff_psnr"][:, sl] = psnr(first, flat_t).view(B, K).numpy()
        m["ff_ssim"][:, sl] = ssim(first, flat_t).view(B, K).numpy()
        m["vae_psnr"][:, sl] = psnr(rec, flat_t).view(B, K).numpy()
        m["vae_ssim"][:, sl] = ssim(rec, flat_t).view(B, K).numpy()
    curves = {k: _mean_by_frame(v, valid) for k, v in m.items()}
    at = {}
    for h in HORIZONS:
        if h <= n_chunks * K and curves["psnr"][h - 1] is not None:
            at[str(h)] = {"imagined_psnr": curves["psnr"][h - 1], "first_frame_psnr": curves["ff_psnr"][h - 1],
                          "vae_psnr": curves["vae_psnr"][h - 1], "imagined_ssim": curves["ssim"][h - 1],
                          "first_frame_ssim": curves["ff_ssim"][h - 1], "vae_ssim": curves["vae_ssim"][h - 1],
                          "episodes": int(valid[:, h - 1].sum())}
    return {"imagined": {"psnr": curves["psnr"], "ssim": curves["ssim"]},
            "first_frame": {"psnr": curves["ff_psnr"], "ssim": curves["ff_ssim"]},
            "vae": {"psnr": curves["vae_psnr"], "ssim": curves["vae_ssim"]},
            "at": at, "num_episodes": B, "lengths": lengths.tolist(),
            "frames": torch.cat(imag_u8, 1).numpy()}


MOVING = 0.1
"""a latent pixel moves when its mean squared change over channels from the last context frame exceeds this"""
STATIC = 0.01
"""... and is static below this"""


@torch.no_grad()
def action_sensitivity(vae, world_model, episodes: Sequence, action_stats: dict, *, device: torch.device,
                       windows: int = 64, times: Sequence[float] = (0.3, 0.7), seed: int = 0) -> dict[str, Any]:
    """On `windows` random windows (c + K frames) of the episodes: the world model's velocity error on the
    predicted frames at flow times `times`, split into static and moving latent pixels (change from the
    last context frame < STATIC, > MOVING), with the real actions and with those of another window.

    -> {"windows", "moving_fraction", "t<time>": {"static", "moving", "moving_permuted", "action_gap"}}, where
    action_gap = moving_permuted / moving: 1.0 when the model ignores its actions, above 1 when it uses them
    (None where no latent pixel of the windows moves, or none is static)."""
    from wmpo import ops
    from wmpo.train.world_model import build_dataset

    data = build_dataset(vae, episodes, action_stats, world_model.cfg, device)
    gen = torch.Generator().manual_seed(seed)
    x0, act = data.sample(windows, gen)
    x0, act = x0.to(device), act.to(device)
    c = world_model.cfg.num_context
    change = (x0[:, c:] - x0[:, c - 1:c]).float().pow(2).mean(2)  # [B, K, h, w]
    static, moving = change < STATIC, change > MOVING
    other = torch.roll(torch.arange(windows, device=device), 1)  # each window gets its neighbour's actions

    def mean(e: torch.Tensor, mask: torch.Tensor) -> float | None:  # None: no such pixel
        return float(e[mask].mean()) if mask.any() else None

    out: dict[str, Any] = {"windows": windows, "moving_fraction": float(moving.float().mean())}
    for t in times:
        noise = torch.randn(x0.shape, generator=gen).to(device)
        xg = generation_window(world_model.cfg, x0)
        xt, tf = ops.noisy_context(xg, noise, torch.full((windows,), float(t), device=device), num_context=c,
                                   t_context=world_model.cfg.t_context)
        target = (noise[:, c:] - xg[:, c:]).float()
        err = {k: (world_model(xt, tf, a)[:, c:].float() - target).pow(2).mean(2) for k, a in (("real", act), ("other", act[other]))}
        real_m, other_m = mean(err["real"], moving), mean(err["other"], moving)
        out[f"t{t}"] = {"static": mean(err["real"], static), "moving": real_m, "moving_permuted": other_m,
                        "action_gap": other_m / real_m if real_m else None}
    return out


def outcome_agreement(reward_model, imagined: np.ndarray, lengths: Sequence[int], real_success: Sequence[bool],
                      device: torch.device) -> dict[str, Any]:
    """The reward model's verdict on each imagined replay (cut at the real episode's length) vs the
    real outcome."""
    thr = float(reward_model.threshold)
    videos = [imagined[b, : int(n) + 1] for b, n in enumerate(lengths)]
    scores = video_scores(reward_model, videos, device)
    pred = scores >= thr
    real = np.asarray(real_success, bool)
    p, r, f1 = prf1(pred, real)
    return {"agreement": float((pred == real).mean()), "imagined_success_rate": float(pred.mean()),
            "real_success_rate": float(real.mean()), "precision": p, "recall": r, "f1": f1, "threshold": thr,
            "episodes": int(len(real))}


def reward_on_real(reward_model, episodes: Sequence, device: torch.device) -> dict[str, Any]:
    """Precision / recall / F1 of the reward model's verdict on real episodes (their true outcomes)."""
    thr = float(reward_model.threshold)
    scores = video_scores(reward_model, [e.frames for e in episodes], device)
    pred, real = scores >= thr, np.array([bool(e.success) for e in episodes])
    p, r, f1 = prf1(pred, real)
    return {"precision": p, "recall": r, "f1": f1, "accuracy": float((pred == real).mean()), "episodes": len(real),
            "positives": int(real.sum()), "threshold": thr}


def write_fidelity_plot(results: dict[str, dict], path: Path) -> None:
    """PSNR and SSIM vs horizon: imagined (one line per label) and the two references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    first = next(iter(results.values()))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for label, r in results.items():
            ys = r["imagined"][metric]
            ax.plot(range(1, len(ys) + 1), [np.nan if y is None else y for y in ys], label=f"world model ({label})")
        for ref, style in (("first_frame", "--"), ("vae", ":")):
            ys = first[ref][metric]
            ax.plot(range(1, len(ys) + 1), [np.nan if y is None else y for y in ys], style,
                    label={"first_frame": "repeat first frame", "vae": "VAE reconstruction"}[ref])
        ax.set_xlabel("frames after the first")
        ax.set_title(metric.upper())
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
