"""`wmpo train-wm`: rectified-flow training of the world model on latent windows (pretrain, or fine-tune
from a checkpoint for policy behaviour alignment). Context frames noised to t_context, loss on the K
predicted frames only (velocity target noise - x0)."""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from wmpo import ops
from wmpo.data.clips import LatentWindowDataset, encode_episodes, normalize_actions
from wmpo.data.loader import action_stats as episode_action_stats
from wmpo.data.loader import check_action_stats, load_episodes, same_action_stats
from wmpo.models.vae import FrameVAE
from wmpo.models.world_model import WorldModel, WorldModelConfig, generation_window, legacy_action_stats
from wmpo.train.loop import TrainLoopConfig, warmup_cosine_lr
from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint, save_json
from wmpo.utils.device import autocast_dtype, default_device, seed_everything
from wmpo.utils.logging import ScalarLogger, progress


@dataclass
class WMTrainConfig(TrainLoopConfig):
    """World-model training; batch_size counts windows of c + K frames; lr 1e-4, weight decay 0 and
    gradient clip 0.1 as the paper's Table 3. Loop fields: TrainLoopConfig."""

    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    """the world model architecture"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (paper)"""
    ema_decay: float = 0.9999
    """EMA of the weights (paper 0.9999); 0 disables"""
    ema_warmup: bool = False
    """decay min(ema_decay, (1 + n) / (10 + n)) at this trainer's update n (`ema_decay_at`), so the EMA of a
    short run is not mostly its initialization (0.99 over 250 steps keeps 8% of it); False: ema_decay
    from the first update, as runs written before this field"""
    lr_schedule: str = "constant"
    """'constant' (paper) or 'cosine': linear warmup over warmup_steps, then cosine to lr * min_lr_ratio"""
    warmup_steps: int = 0
    """linear warmup steps of the 'cosine' schedule"""
    min_lr_ratio: float = 0.1
    """final lr / peak lr of the 'cosine' schedule"""
    t_sampling: str = "logit_normal"
    """flow time distribution of predicted frames: 'uniform' or 'logit_normal'"""
    grad_accum: int = 1
    """micro-batches per optimizer step (batch_size is split evenly; same update, less activation memory)"""
    grad_checkpointing: bool = False
    """recompute each block's activations in backward instead of keeping them (memory for compute)"""
    steps: int = 100000  # (loop defaults of the world model)
    grad_clip: float = 0.1
    log_every: int = 25


def ema_decay_at(n: int, cfg: WMTrainConfig) -> float:
    """The EMA decay of update n (0-based): cfg.ema_decay, capped by (1 + n) / (10 + n) under ema_warmup."""
    return min(cfg.ema_decay, (1 + n) / (10 + n)) if cfg.ema_warmup else cfg.ema_decay


def sample_t(n: int, how: str, gen: torch.Generator) -> torch.Tensor:
    if how == "uniform":
        return torch.rand(n, generator=gen)
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen))
    raise ValueError(f"t_sampling: expected 'uniform' or 'logit_normal', got {how!r}")


def flow_loss(model: WorldModel, x0: torch.Tensor, actions: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE between predicted velocity and noise - x0 on the predicted frames; context at t_context. x0: clean
    latent frames (generation_window turns them into the model's targets)."""
    c = model.cfg.num_context
    x0 = generation_window(model.cfg, x0)
    xt, tf = ops.noisy_context(x0, noise, t, num_context=c, t_context=model.cfg.t_context)
    v = model(xt, tf, actions)
    return (v[:, c:].float() - (noise[:, c:] - x0[:, c:]).float()).pow(2).mean()


def lr_at(step: int, cfg: WMTrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) under cfg.lr_schedule."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {cfg.lr_schedule!r}")
    return warmup_cosine_lr(step, cfg)


class WMTrainer:
    """Holds model/optimizer/EMA/RNG; `step()` is one optimizer step; state() / load() for exact resume."""

    def __init__(self, cfg: WMTrainConfig, data: LatentWindowDataset, device: torch.device, init_state: dict | None = None):
        self.cfg, self.data, self.device = cfg, data, device
        self.model = (WorldModel.from_state(init_state) if init_state is not None else WorldModel(cfg.model)).to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step_count = 0
        self.rewarm_from: int | None = None
        self.elapsed_s, self._t0 = 0.0, time.time()
        self.amp = autocast_dtype(device)

    def step(self) -> float:
        n_micro = self.cfg.grad_accum
        if n_micro < 1 or self.cfg.batch_size % n_micro:
            raise ValueError(f"grad_accum: expected a divisor of batch_size={self.cfg.batch_size}, got {n_micro}")
        x0, act = self.data.sample(self.cfg.batch_size, self.gen)
        t = sample_t(x0.shape[0], self.cfg.t_sampling, self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        self.model.train()
        self.model.grad_checkpointing = self.cfg.grad_checkpointing
        rewarm = self.rewarm_from
        scale = 1.0 if rewarm is None else min(1.0, (self.step_count - rewarm + 1) / self.REWARM_STEPS)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step_count, self.cfg) * scale
        self.opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for part in zip(*(z.chunk(n_micro) for z in (x0, act, t, noise))):  # equal micro-batches: mean of means
            xm, am, tm, nm = (z.to(self.device) for z in part)
            with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
                loss = flow_loss(self.model, xm, am, tm, nm) / n_micro
            loss.backward()
            loss_sum += float(loss.detach())
        loss = torch.tensor(loss_sum)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        if self.ema is not None:
            decay = ema_decay_at(self.step_count, self.cfg)
            with torch.no_grad():
                for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(pm, 1 - decay)
        self.step_count += 1
        return loss.item()

    def state(self) -> dict:
        return {"model": self.model.state(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "optim": self.opt.state_dict(), "rng": self.gen.get_state(), "step": self.step_count,
                "train_config": asdict(self.cfg), "elapsed_s": self.elapsed_s + (time.time() - self._t0)}

    REWARM_STEPS = 200
    """after resuming from a checkpoint kept without its optimizer state: steps of linear LR re-warmup"""

    def load(self, st: dict) -> None:
        self.model.load_state_dict(st["model"]["state_dict"])
        if self.ema is not None and st.get("ema") is not None:
            self.ema.load_state_dict(st["ema"])
        self.gen.set_state(st["rng"])
        self.step_count = st["step"]
        self.elapsed_s = float(st.get("elapsed_s", 0.0))  # training wall time over every earlier run (and machine)
        self._t0 = time.time()
        if st.get("optim") is not None:
            self.opt.load_state_dict(st["optim"])
        else:  # a slim checkpoint (experiments/persist.py keeps runs without optimizer moments): fresh AdamW, re-warmed
            warnings.warn(f"world-model checkpoint at step {self.step_count} holds no optimizer state: AdamW restarts, its "
                          f"learning rate re-warmed over {self.REWARM_STEPS} steps", stacklevel=2)
            self.rewarm_from = self.step_count


def build_dataset(vae: FrameVAE, episodes, stats: dict, model_cfg: WorldModelConfig, device) -> LatentWindowDataset:
    lat = encode_episodes(vae, episodes, torch.device(device))
    acts = [normalize_actions(e.actions, stats) for e in episodes]
    return LatentWindowDataset(lat, acts, model_cfg.num_context, model_cfg.chunk_len)


def train_world_model(cfg: WMTrainConfig, store_paths: Sequence[str] | None, out_dir: str | Path, *, vae: FrameVAE | str | Path,
                      init_from: str | Path | None = None, episodes=None, action_stats: dict | None = None,
                      device: torch.device | str | None = None, resume: bool = True) -> dict:
    """Pretrain (init_from=None) or fine-tune (init_from = a world_model.pt) on windows of the given stores
    (or `episodes` + `action_stats`). Writes out_dir/world_model.pt, config.json, tb/. Returns {"loss", "step", "path"}.

    Action statistics (q01/q99, saved in the checkpoint): a pretraining run computes them from its data
    (or takes `action_stats`); a fine-tuning run keeps its init checkpoint's, whatever data it is given, so
    the model's action inputs mean the same thing before and after; a resumed run keeps its own
    checkpoint's. An init checkpoint without statistics (an older train-wm, no action_stats.json beside
    it) needs `action_stats` given explicitly: the statistics it was trained with."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else default_device()
    seed_everything(cfg.seed)
    if not isinstance(vae, FrameVAE):
        vae = FrameVAE.from_checkpoint(vae)
    vae = vae.to(device).eval()
    if episodes is None:
        episodes, data_stats = load_episodes(list(store_paths or []))
    else:
        data_stats = episode_action_stats(episodes)
    if action_stats is not None:
        action_stats = check_action_stats("action_stats", action_stats)
    init_state = None
    stats, stats_source = (action_stats, "given") if action_stats is not None else (data_stats, "data")
    if init_from is not None:
        st = load_checkpoint(init_from)
        init_state = st["model"] if "model" in st else st
        if st.get("ema") is not None:  # fine-tune from the EMA weights
            init_state = {**init_state, "state_dict": st["ema"]}
        cfg.model = WorldModelConfig(**init_state["config"])
        init_stats = init_state.get("action_stats") or legacy_action_stats(init_from)
        if init_stats is not None:
            if action_stats is not None and not same_action_stats(action_stats, init_stats):
                raise ValueError(f"action_stats: expected the statistics of init_from={init_from} (fine-tuning keeps "
                                 f"them), got different ones; leave action_stats out")
            stats, stats_source = init_stats, "init_from"
        elif action_stats is None:
            raise ValueError(f"init_from: {init_from} holds no action statistics (q01/q99; written by an older "
                             f"train-wm, no action_stats.json beside it); pass action_stats= the statistics it was "
                             f"trained with")
    ckpt = out / "world_model.pt"
    resume_state = load_checkpoint(ckpt) if resume and ckpt.is_file() else None
    if resume_state is not None and resume_state["model"].get("action_stats") is not None:
        stats, stats_source = resume_state["model"]["action_stats"], "resume"
    stats = check_action_stats("action_stats", stats, cfg.model.action_dim)
    if (cfg.model.latent_channels, cfg.model.latent_size) != (vae.latent_channels, vae.latent_size):
        if init_state is not None:
            raise ValueError(f"vae: expected latents {cfg.model.latent_channels}x{cfg.model.latent_size} (the checkpoint's), "
                             f"got {vae.latent_channels}x{vae.latent_size}")
        cfg.model.latent_channels, cfg.model.latent_size = vae.latent_channels, vae.latent_size
    data = build_dataset(vae, episodes, stats, cfg.model, device)
    tr = WMTrainer(cfg, data, device, init_state)
    if resume_state is not None:
        tr.load(resume_state)
    tr.model.set_action_stats(stats)
    save_json(out / "config.json", asdict(cfg))
    save_json(out / "action_stats.json", {k: [float(x) for x in v] for k, v in stats.items()})
    log = ScalarLogger(out / "tb")
    loss = float("nan")
    losses: list[float] = []
    for _ in progress(range(tr.step_count, cfg.steps), total=cfg.steps - tr.step_count, desc="train-wm"):
        loss = tr.step()
        losses.append(loss)
        s = tr.step_count
        if s % cfg.log_every == 0 or s == cfg.steps:
            log.scalar("train/loss", sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]), s)
        if s % cfg.ckpt_every == 0:
            save_checkpoint(ckpt, tr.state())
    save_checkpoint(ckpt, tr.state())
    log.close()
    tail = losses[-max(1, min(len(losses), cfg.log_every)):]
    result = {"loss": sum(tail) / len(tail) if tail else loss, "step": tr.step_count, "path": str(ckpt),
              "action_stats_from": stats_source, "train_seconds_all_runs": round(tr.state()["elapsed_s"], 1)}
    save_json(out / "result.json", result)
    return result
