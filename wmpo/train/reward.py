"""Training the VideoMAE success classifier (`wmpo train-reward`), paper section 3.3.

Clips of L=8 frames end at a frame index e (frames e-7 .. e, left-padded with frame 0 when e < 7).
  positive:  the terminal clip of a success, ending at its success frame finish_step (clamped to 1 .. T)
  negative:  clips of successes ending at e <= success_frame - L (entirely before the success),
             and any clip of a failure (e = 1 .. T)
Each batch is half positives, half negatives (sampled with replacement), BCE loss.

Episodes are split per (task, outcome) into train / val / test. After training, the threshold is
the F1-best one on the validation trajectories (a trajectory is predicted successful if any of its
windows exceeds it), stored in the checkpoint; precision / recall / F1 per task are reported on
the held-out test trajectories. Outputs in out_dir: reward.pt (`wmpo.models.reward.load_reward`),
train_state.pt (resume), config.json, metrics.json, tb/.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wmpo.data.episode import Episode
from wmpo.models.policy import random_shift
from wmpo.models.reward import RewardConfig, RewardModel, prf1, save_reward, select_threshold
from wmpo.data.loader import load_episodes
from wmpo.train.loop import LoopState, ScheduledTrainConfig, amp_dtype, optimizer_step, warmup_cosine_lr
from wmpo.utils.checkpoint import save_json
from wmpo.utils.device import default_device, seed_everything
from wmpo.utils.frames import uint8_to_model
from wmpo.utils.logging import ScalarLogger, progress, warn_once


@dataclass
class RewardTrainConfig(ScheduledTrainConfig):
    """Success-classifier training; batch_size counts clips (half positive, half negative), crop_pad
    shifts each clip, eval_every runs validation F1. Loop fields: ScheduledTrainConfig."""

    reward: RewardConfig = field(default_factory=RewardConfig)
    """the reward model architecture"""
    val_fraction: float = 0.2
    """episodes per (task, outcome) for threshold selection"""
    test_fraction: float = 0.2
    """episodes per (task, outcome) held out for the reported precision / recall / F1"""
    steps: int = 5000  # (loop defaults of the reward model)
    weight_decay: float = 0.05
    warmup_steps: int = 200
    eval_every: int = 1000
    log_every: int = 20


def success_frame(ep: Episode) -> int:
    """Index of the first frame showing success: frames[finish_step] (Episode.finish_step; clamped to 1 .. T)."""
    T = len(ep.actions)
    return int(min(max(int(ep.finish_step), 1), T))


def clip_pools(episodes: Sequence[Episode], clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (positives [P, 2], negatives [Q, 2]) rows (episode index, clip end frame)."""
    pos, neg = [], []
    for i, ep in enumerate(episodes):
        T = len(ep.actions)
        if T == 0:
            continue
        if ep.success:
            s = success_frame(ep)
            pos.append((i, s))
            neg += [(i, e) for e in range(1, s - clip_len + 1)]
        else:
            neg += [(i, e) for e in range(1, T + 1)]
    return np.asarray(pos, dtype=np.int64).reshape(-1, 2), np.asarray(neg, dtype=np.int64).reshape(-1, 2)


def gather_clips(episodes: Sequence[Episode], rows: np.ndarray, clip_len: int) -> torch.Tensor:
    """rows [N, 2] (episode, end) -> uint8 [N, L, H, W, 3], indices end-L+1 .. end clamped at 0."""
    k = np.arange(-clip_len + 1, 1)
    out = [np.asarray(episodes[int(i)].frames)[np.maximum(int(e) + k, 0)] for i, e in rows]
    return torch.from_numpy(np.stack(out))


def split_episodes(episodes: Sequence[Episode], val_fraction: float, test_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Stratified by (task, success): -> (train, val, test) episode indices; train keeps >= 1 per group."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, ep in enumerate(episodes):
        groups.setdefault((str(ep.task), bool(ep.success)), []).append(i)
    rng = np.random.default_rng(seed)
    tr, va, te = [], [], []
    for key in sorted(groups):
        idx = [int(i) for i in rng.permutation(groups[key])]
        n = len(idx)
        n_te = min(int(round(n * test_fraction)), max(0, n - 1))
        n_va = min(int(round(n * val_fraction)), max(0, n - 1 - n_te))
        te += idx[:n_te]
        va += idx[n_te : n_te + n_va]
        tr += idx[n_te + n_va :]
    return sorted(tr), sorted(va), sorted(te)


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
@torch.no_grad()
def video_scores(model: RewardModel, videos: Sequence[np.ndarray], device: torch.device) -> np.ndarray:
    """Max window probability per uint8 [T+1, H, W, 3] video (windows ending at frames 1..T, left-padded), as at rollout."""
    model.eval()
    out = []
    for v in videos:
        f = uint8_to_model(torch.as_tensor(np.asarray(v)).to(device))[None]
        probs = model.score_windows(f, pad=True)[0, 1:]
        out.append(float(probs.max()) if probs.numel() else 0.0)
    return np.asarray(out, dtype=np.float64)


def trajectory_scores(model: RewardModel, episodes: Sequence[Episode], device: torch.device) -> np.ndarray:
    """video_scores of the episodes' frames."""
    return video_scores(model, [ep.frames for ep in episodes], device)


def per_task_metrics(episodes: Sequence[Episode], scores: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """{task: {precision, recall, f1, accuracy, n, positives}} plus "all"."""
    tasks = np.asarray([str(e.task) for e in episodes])
    labels = np.asarray([bool(e.success) for e in episodes])
    pred = scores > threshold
    res: dict[str, dict[str, float]] = {}
    for t in sorted(set(tasks.tolist())) + ["all"]:
        m = np.ones(len(tasks), bool) if t == "all" else tasks == t
        p, r, f1 = prf1(pred[m], labels[m])
        res[t] = {"precision": p, "recall": r, "f1": f1, "accuracy": float((pred[m] == labels[m]).mean()) if m.any() else 0.0,
                  "n": int(m.sum()), "positives": int(labels[m].sum())}
    return res


def train_reward_on_episodes(
    cfg: RewardTrainConfig,
    episodes: Sequence[Episode],
    out_dir: str | os.PathLike,
    device: torch.device | str | None = None, resume: bool = True, log_tb: bool = True, show_progress: bool | None = None,
) -> dict[str, Any]:
    """Train on `episodes` (split inside), pick the threshold on val, report on test. -> metrics dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device is not None else default_device()
    seed_everything(cfg.seed)
    episodes = list(episodes)
    tr, va, te = split_episodes(episodes, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    train_eps = [episodes[i] for i in tr]
    val_eps = [episodes[i] for i in va]
    test_eps = [episodes[i] for i in te]
    L = cfg.reward.clip_len
    pos, neg = clip_pools(train_eps, L)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"episodes: expected training clips of both classes, got {len(pos)} positive and {len(neg)} negative "
                         "(need successful and failed / long-enough trajectories)")
    save_json(out / "config.json", {"train": asdict(cfg), "split": {"train": tr, "val": va, "test": te}})
    model = RewardModel(cfg.reward).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    state = LoopState(out / "train_state.pt", "model", model, opt, cfg.seed)
    rng = state.rng
    step = state.resume() if resume else 0
    logger = ScalarLogger(out / "tb" if log_tb else None)
    autocast = amp_dtype(cfg, dev)
    n_pos = cfg.batch_size // 2
    n_neg = cfg.batch_size - n_pos
    labels = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)]).to(dev)
    print(f"[train-reward] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, episodes train/val/test "
          f"{len(train_eps)}/{len(val_eps)}/{len(test_eps)}, clips +{len(pos)} -{len(neg)}, device {dev}, from step {step}")

    thr_eps = val_eps
    if len({e.success for e in val_eps}) < 2:
        warn_once("wmpo.reward.val", "train-reward: the validation split lacks successes or failures; the threshold is chosen on train + val")
        thr_eps = train_eps + val_eps

    t0, s0 = time.perf_counter(), step
    last: dict[str, float] = {}
    model.train()
    for step in progress(range(step, cfg.steps), total=cfg.steps - step, desc="train-reward", disable=None if show_progress is None else not show_progress):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, cfg)
        rows = np.concatenate([pos[rng.integers(0, len(pos), n_pos)], neg[rng.integers(0, len(neg), n_neg)]])
        clips = uint8_to_model(gather_clips(train_eps, rows, L).to(dev))
        x = model.prepare(clips)
        if cfg.crop_pad > 0:
            x = random_shift(x, cfg.crop_pad)
        with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
            logits = model(x, prepared=True)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        optimizer_step(opt, loss, model.parameters(), cfg.grad_clip)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            with torch.no_grad():
                acc = ((logits > 0).float() == labels).float().mean()
            last = {"train/loss": float(loss.detach()), "train/clip_acc": float(acc), "train/lr": opt.param_groups[0]["lr"],
                    "train/steps_per_sec": (done - s0) / max(time.perf_counter() - t0, 1e-9)}
            logger.scalars(last, done)
        if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done != cfg.steps and thr_eps:
            s = trajectory_scores(model, thr_eps, dev)
            _, f1 = select_threshold(s, [e.success for e in thr_eps])
            logger.scalar("val/f1", f1, done)
            model.train()
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            state.save(done)
    elapsed = time.perf_counter() - t0

    # threshold by F1 on validation trajectories, then held-out metrics
    model.eval()
    val_scores = trajectory_scores(model, thr_eps, dev)
    thr, val_f1 = select_threshold(val_scores, [e.success for e in thr_eps])
    model.threshold.fill_(thr)
    report_eps = test_eps if test_eps else val_eps
    test_scores = trajectory_scores(model, report_eps, dev) if report_eps else np.zeros(0)
    metrics = {
        "threshold": thr,
        "val_f1": val_f1,
        "val": per_task_metrics(thr_eps, val_scores, thr),
        "test": per_task_metrics(report_eps, test_scores, thr) if report_eps else {},
        "test_split": "test" if test_eps else "val",
        "train_last": last,
        "steps": cfg.steps,
        "steps_this_run": cfg.steps - s0,
        "wall_s": elapsed,
        "device": str(dev),
        "reward_path": str(out / "reward.pt"),
    }
    for task, m in metrics["test"].items():
        for k in ("precision", "recall", "f1"):
            logger.scalar(f"eval/{task}/{k}", m[k], cfg.steps)
    logger.close()
    save_reward(out / "reward.pt", model, step=cfg.steps, metrics={"threshold": thr, "val_f1": val_f1})
    save_json(out / "metrics.json", metrics)
    return metrics


def train_reward(cfg: RewardTrainConfig, store_paths: Sequence[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike,
                 **kw: Any) -> dict[str, Any]:
    """Train on every episode of the given trajectory stores (keywords: train_reward_on_episodes)."""
    episodes, _ = load_episodes(store_paths)
    return train_reward_on_episodes(cfg, episodes, out_dir, **kw)
