"""`wmpo distill-wm`: distil a rectified-flow world model (the teacher) into a few-step student that
samples at 1, 2, 4, ... steps: a shortcut model (Frans et al. 2024, "One Step Diffusion via Shortcut
Models") conditioned on the step size d, initialised from the teacher (docs/fewstep.md says why).

The student u(x_t, t, d) is the average velocity over a step of size d from t (x_{t-d} = x_t - d u).
Each optimizer step trains two kinds of rows of one batch of real latent windows, in one forward:
  - velocity rows (d = 0): t from cfg.t_sampling, target = the teacher's velocity at (x_t, t);
  - shortcut rows (one level d = 2^-k per step, k uniform in 0..log2(base_steps), t on the grid
    {d, 2d, ..., 1}): target = the mean of two half steps, u(x_t, t, d/2) and u(x', t - d/2, d/2) with
    x' = x_t - (d/2) u(x_t, t, d/2), both from the teacher's velocity at the finest level (d = 1/M) and
    from the student itself (no gradient) above it.
Context frames stay at t_context with d = 0 (the exact context cache still applies at sampling).
Resumable (wmpo.train.loop.LoopState: student, optimizer, step, RNG) from out/train_state.pt.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from wmpo import ops
from wmpo.data.loader import load_episodes
from wmpo.models.vae import FrameVAE
from wmpo.models.world_model import WorldModel, generation_window
from wmpo.train.loop import LoopState, TrainLoopConfig, optimizer_step
from wmpo.train.world_model import build_dataset, sample_t
from wmpo.utils.checkpoint import save_checkpoint, save_json
from wmpo.utils.device import autocast_dtype, default_device, seed_everything
from wmpo.utils.logging import ScalarLogger, progress


@dataclass
class DistillConfig(TrainLoopConfig):
    """Shortcut distillation of a world model; batch_size counts windows of c + K frames."""

    base_steps: int = 32
    """M: the finest step 1/M whose two half steps use the teacher's velocity (a power of 2; levels 1 .. 1/M)"""
    velocity_fraction: float = 0.5
    """share of each batch's rows trained on the teacher's instantaneous velocity (d = 0)"""
    t_sampling: str = "logit_normal"
    """flow time distribution of the velocity rows: 'uniform' or 'logit_normal' (as train-wm)"""
    steps: int = 2000
    lr: float = 1e-4
    grad_clip: float = 0.1
    log_every: int = 25
    ckpt_every: int = 200

    def check(self) -> None:
        M = self.base_steps
        if isinstance(M, bool) or not isinstance(M, int) or M < 1 or M & (M - 1):
            raise ValueError(f"base_steps: expected a power of 2 >= 1, got {M!r}")
        if not 0.0 < self.velocity_fraction < 1.0:
            raise ValueError(f"velocity_fraction: expected a float in (0, 1), got {self.velocity_fraction!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size: expected >= 2 (velocity and shortcut rows), got {self.batch_size}")
        if self.t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"t_sampling: expected 'uniform' or 'logit_normal', got {self.t_sampling!r}")


def student_from_teacher(teacher: WorldModel) -> WorldModel:
    """A step-conditioned copy of `teacher`: its weights, plus a step-size embedding whose last layer is
    zero, so the student starts as the teacher at every step size."""
    if teacher.cfg.step_conditioned:
        raise ValueError("teacher: expected a plain flow world model (train-wm), got a step-conditioned student")
    student = WorldModel(replace(teacher.cfg, step_conditioned=True))
    res = student.load_state_dict(teacher.state_dict(), strict=False)
    if res.unexpected_keys or any(not k.startswith("d_mlp.") for k in res.missing_keys):
        raise ValueError(f"teacher: weights do not fit its own config (missing {res.missing_keys}, unexpected {res.unexpected_keys})")
    student.set_action_stats(teacher.action_stats)
    return student.to(next(teacher.parameters()).device)


def _half_steps(fn, xt: torch.Tensor, t: torch.Tensor, half: torch.Tensor, c: int, t_context: float) -> torch.Tensor:
    """Mean of two Euler half steps of fn(x, t_frames) -> velocity: at (x_t, t), then at (x', t - half)."""
    B, T = xt.shape[:2]

    def tf(tt):
        out = tt.view(B, 1).expand(B, T).clone()
        out[:, :c] = t_context
        return out

    u1 = fn(xt, tf(t)).float()
    x2 = xt.float().clone()
    x2[:, c:] -= half.view(B, 1, 1, 1, 1) * u1[:, c:]
    u2 = fn(x2.to(xt.dtype), tf(t - half)).float()
    return 0.5 * (u1 + u2)


def distill_loss(student: WorldModel, teacher: WorldModel, x0: torch.Tensor, actions: torch.Tensor, cfg: DistillConfig,
                 noise: torch.Tensor, level: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's loss (x0/noise [B, c+K, C, h, w], actions [B, c+K, A]); `level` k: the shortcut rows'
    step size d = 2^-k. Randomness from the global torch RNG. -> (loss, {"velocity", "shortcut"} MSEs)."""
    c, tc = student.cfg.num_context, student.cfg.t_context
    x0 = generation_window(student.cfg, x0)  # the teacher's config: the student is a copy of it
    B, T = x0.shape[:2]
    dev = x0.device
    nv = min(B - 1, max(1, round(B * cfg.velocity_fraction)))
    ns = B - nv
    d = 2.0 ** -level
    t_v = sample_t(nv, cfg.t_sampling, None).to(dev)
    t_s = (d * torch.randint(1, 2 ** level + 1, (ns,))).float().to(dev)  # the grid {d, 2d, ..., 1}
    xt, tf = ops.noisy_context(x0, noise, torch.cat([t_v, t_s]), num_context=c, t_context=tc)
    half = torch.full((ns,), d / 2, device=dev)
    xs, acts_s = xt[nv:], actions[nv:]
    with torch.no_grad():
        target_v = teacher(xt[:nv], tf[:nv], actions[:nv]).float()
        if d * cfg.base_steps <= 1:  # the finest level: two half steps of the teacher's velocity
            target_s = _half_steps(lambda x, tt: teacher(x, tt, acts_s), xs, t_s, half, c, tc)
        else:  # coarser: two half steps of the student itself (bootstrap, no gradient)
            d_half = torch.cat([torch.zeros(ns, c, device=dev), half.view(ns, 1).expand(ns, T - c)], 1)
            target_s = _half_steps(lambda x, tt: student(x, tt, acts_s, step_size=d_half), xs, t_s, half, c, tc)
    step = torch.zeros(B, T, device=dev)
    step[nv:, c:] = d
    pred = student(xt, tf, actions, step_size=step).float()
    err_v = (pred[:nv, c:] - target_v[:, c:]).pow(2).mean()
    err_s = (pred[nv:, c:] - target_s[:, c:]).pow(2).mean()
    loss = (nv * err_v + ns * err_s) / B
    return loss, {"velocity": float(err_v.detach()), "shortcut": float(err_s.detach())}


def student_checkpoint(student: WorldModel, teacher_path: str, cfg: DistillConfig, step: int) -> dict:
    """A world-model checkpoint (`WorldModel.from_checkpoint` loads it) with where it came from."""
    return {"model": student.state(), "ema": None, "teacher": str(teacher_path), "distill_config": asdict(cfg), "step": step}


def distill_world_model(cfg: DistillConfig, teacher_path: str | Path, store_paths: Sequence[str], out_dir: str | Path, *,
                        vae: FrameVAE | str | Path, device: torch.device | str | None = None, resume: bool = True,
                        episodes=None) -> dict:
    """Distil the teacher (a world_model.pt) on latent windows of the stores (or `episodes`) encoded by
    `vae`. Writes out_dir/student.pt (a world-model checkpoint), train_state.pt, config.json, tb/,
    result.json. -> {"loss", "step", "path", ...}."""
    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device is not None else default_device()
    seed_everything(cfg.seed)
    teacher = WorldModel.from_checkpoint(teacher_path).to(dev).eval().requires_grad_(False)
    if teacher.action_stats is None:
        raise ValueError(f"teacher: {teacher_path} holds no action statistics (q01/q99); retrain it with this train-wm")
    if not isinstance(vae, FrameVAE):
        vae = FrameVAE.from_checkpoint(vae)
    vae = vae.to(dev).eval()
    if (vae.latent_channels, vae.latent_size) != (teacher.cfg.latent_channels, teacher.cfg.latent_size):
        raise ValueError(f"vae: expected latents {teacher.cfg.latent_channels}x{teacher.cfg.latent_size} (the teacher's), "
                         f"got {vae.latent_channels}x{vae.latent_size}")
    if episodes is None:
        episodes, _ = load_episodes(list(store_paths))
    data = build_dataset(vae, episodes, teacher.action_stats, teacher.cfg, dev)  # the teacher's action space
    student = student_from_teacher(teacher).train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = LoopState(out / "train_state.pt", "student", student, opt, cfg.seed)
    step = state.resume() if resume else 0
    save_json(out / "config.json", {"distill": asdict(cfg), "teacher": str(teacher_path), "student_model": asdict(student.cfg)})
    amp = autocast_dtype(dev)
    log = ScalarLogger(out / "tb")
    levels = int(math.log2(cfg.base_steps))
    print(f"[distill-wm] {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params, {len(data)} windows, "
          f"levels d = 1 .. 1/{cfg.base_steps}, device {dev}, from step {step}")
    losses: list[float] = []
    parts: dict[str, float] = {}
    t0, s0 = time.perf_counter(), step
    for step in progress(range(step, cfg.steps), total=cfg.steps - step, desc="distill-wm"):
        x0, act = data.sample(cfg.batch_size)  # global torch RNG (saved by LoopState)
        noise = torch.randn(x0.shape)
        level = int(torch.randint(0, levels + 1, ()).item())
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss, parts = distill_loss(student, teacher, x0.to(dev), act.to(dev), cfg, noise.to(dev), level)
        optimizer_step(opt, loss, student.parameters(), cfg.grad_clip)
        losses.append(float(loss.detach()))
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            log.scalars({"train/loss": sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]),
                         "train/velocity_mse": parts["velocity"], "train/shortcut_mse": parts["shortcut"],
                         "train/steps_per_sec": (done - s0) / max(time.perf_counter() - t0, 1e-9)}, done)
        if done % cfg.ckpt_every == 0 and done != cfg.steps:
            state.save(done)
            save_checkpoint(out / "student.pt", student_checkpoint(student, teacher_path, cfg, done))
    final = max(s0, cfg.steps)
    state.save(final)
    path = out / "student.pt"
    save_checkpoint(path, student_checkpoint(student, teacher_path, cfg, final))
    log.close()
    tail = losses[-max(1, min(len(losses), cfg.log_every)):]
    result = {"loss": sum(tail) / len(tail) if tail else float("nan"), "first_loss": losses[0] if losses else float("nan"),
              "step": final, "path": str(path), "teacher": str(teacher_path), "base_steps": cfg.base_steps}
    save_json(out / "result.json", result)
    return result
