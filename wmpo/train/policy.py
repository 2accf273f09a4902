"""Behaviour cloning of the built-in VLA policy (`wmpo train-policy`).

Sample (episode, t): input frame t, target the expert chunk actions[t .. t+K-1] tokenized with the
store's q01/q99. Chunk positions past the episode's end are masked out of the loss. Random-crop
augmentation (pad-and-crop shift), AdamW with warmup + cosine decay, cross-entropy over all K*D
tokens. Atomic checkpoints every `ckpt_every` steps (train_state.pt, resumed automatically) and the
final policy (policy.pt, `wmpo.models.policy.load_policy`); config.json; TensorBoard under tb/.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wmpo.data.episode import Episode
from wmpo.data.loader import load_episodes
from wmpo.models.policy import PolicyConfig, VLAPolicy, num_params, random_shift, save_policy
from wmpo.models.tokenizer import ActionTokenizer
from wmpo.train.loop import LoopState, ScheduledTrainConfig, amp_dtype, optimizer_step, warmup_cosine_lr
from wmpo.utils.checkpoint import save_json
from wmpo.utils.device import default_device, seed_everything
from wmpo.utils.frames import resize, uint8_to_model
from wmpo.utils.logging import ScalarLogger, progress


@dataclass
class PolicyTrainConfig(ScheduledTrainConfig):
    """Behaviour cloning; batch_size counts (frame, action chunk) samples. Loop fields: ScheduledTrainConfig."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """the policy architecture"""
    val_fraction: float = 0.1
    """fraction of episodes held out for validation loss / accuracy (0: none)"""
    batch_size: int = 64  # (loop defaults of behaviour cloning)
    lr: float = 3e-4
    weight_decay: float = 0.01
    log_every: int = 20

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicyTrainConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k != "policy"}
        pol = d.get("policy", {})
        return cls(policy=pol if isinstance(pol, PolicyConfig) else PolicyConfig.from_dict(pol), **kw)


# ---------------------------------------------------------------------- data
class ChunkDataset:
    """All (episode, t) samples of a list of episodes, gathered into batches with numpy indexing."""

    def __init__(self, episodes: Sequence[Episode], tokenizer: ActionTokenizer, chunk_len: int):
        if not episodes:
            raise ValueError("episodes: expected at least one episode, got none")
        K = int(chunk_len)
        self.K = K
        frames, tokens, samples = [], [], []
        f_off = t_off = 0
        for e in episodes:
            T = len(e.actions)
            if T == 0:
                continue
            fr = np.asarray(e.frames)
            if fr.dtype != np.uint8 or fr.ndim != 4 or fr.shape[-1] != 3 or fr.shape[0] != T + 1:
                raise ValueError(f"episodes: expected frames uint8 [T+1, H, W, 3] with T={T}, got {fr.dtype} {fr.shape}")
            frames.append(fr)
            tokens.append(tokenizer.encode(np.asarray(e.actions, dtype=np.float32)))
            for t in range(T):
                samples.append((f_off + t, t_off + t, t_off + T - 1))
            f_off += T + 1
            t_off += T
        self.frames = np.concatenate(frames)  # uint8 [sum(T+1), H, W, 3]
        self.tokens = np.concatenate(tokens)  # int64 [sum(T), D]
        s = np.asarray(samples, dtype=np.int64)
        self.frame_idx, self.tok_idx, self.tok_last = s[:, 0], s[:, 1], s[:, 2]

    def __len__(self) -> int:
        return len(self.frame_idx)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (frames uint8 [B, H, W, 3], tokens int64 [B, K, D], mask bool [B, K])."""
        k = np.arange(self.K)
        t = self.tok_idx[idx, None] + k[None]
        last = self.tok_last[idx, None]
        mask = t <= last
        t = np.minimum(t, last)  # padded positions repeat the last action, and are masked
        return torch.from_numpy(self.frames[self.frame_idx[idx]]), torch.from_numpy(self.tokens[t]), torch.from_numpy(mask)


def split_episodes(episodes: Sequence[Episode], val_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Random episode-level split (at least one training episode)."""
    n = len(episodes)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    n_val = min(n_val, n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return [episodes[i] for i in perm[n_val:]], [episodes[i] for i in perm[:n_val]]


def bc_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked token cross-entropy. logits [B, K, D, nb], tokens [B, K, D], mask [B, K] -> (loss, metrics)."""
    nb = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, nb).float(), tokens.reshape(-1), reduction="none").view(tokens.shape)
    m = mask[..., None].expand_as(tokens).to(ce.dtype)
    denom = m.sum().clamp(min=1.0)
    loss = (ce * m).sum() / denom
    with torch.no_grad():
        pred = logits.argmax(-1)
        acc = ((pred == tokens).to(ce.dtype) * m).sum() / denom
        # mean |error| in normalized action units (bins of width 2 / nb)
        l1 = ((pred - tokens).abs().to(ce.dtype) * m).sum() / denom * (2.0 / nb)
    return loss, {"token_acc": acc, "action_l1": l1}


def _model_input(frames_u8: torch.Tensor, image_size: int, device: torch.device, crop_pad: int) -> torch.Tensor:
    x = resize(uint8_to_model(frames_u8.to(device, non_blocking=True)), image_size)
    return random_shift(x, crop_pad) if crop_pad > 0 else x


@torch.no_grad()
def evaluate_bc(policy: VLAPolicy, data: ChunkDataset, instr: torch.Tensor, batch_size: int, max_samples: int = 2048) -> dict[str, float]:
    """Mean loss / token accuracy / action L1 over (up to max_samples of) `data`, no augmentation."""
    was = policy.training
    policy.eval()
    dev = policy.device
    idx_all = np.linspace(0, len(data) - 1, num=min(len(data), max_samples)).astype(np.int64)
    tot: dict[str, float] = {"loss": 0.0, "token_acc": 0.0, "action_l1": 0.0}
    n = 0
    for i in range(0, len(idx_all), batch_size):
        idx = idx_all[i : i + batch_size]
        f, tok, mask = data.batch(idx)
        x = _model_input(f, policy.cfg.image_size, dev, 0)
        loss, m = bc_loss(policy.action_logits(x, instr[idx].to(dev)), tok.to(dev), mask.to(dev))
        w = len(idx)
        tot["loss"] += float(loss) * w
        tot["token_acc"] += float(m["token_acc"]) * w
        tot["action_l1"] += float(m["action_l1"]) * w
        n += w
    policy.train(was)
    return {k: v / max(1, n) for k, v in tot.items()}


def _instr_per_sample(policy: VLAPolicy, episodes: Sequence[Episode]) -> torch.Tensor:
    """int64 [num_samples, L] instruction tokens aligned with ChunkDataset sample order (CPU)."""
    uniq: dict[str, int] = {}
    rows = []
    for e in episodes:
        if len(e.actions) == 0:
            continue
        j = uniq.setdefault(e.instruction, len(uniq))
        rows.append(np.full(len(e.actions), j, dtype=np.int64))
    table = policy.encode_instructions(list(uniq), device=torch.device("cpu"))
    return table[torch.from_numpy(np.concatenate(rows))]


def train_policy_on_episodes(
    cfg: PolicyTrainConfig,
    episodes: Sequence[Episode],
    stats: dict[str, np.ndarray],
    out_dir: str | os.PathLike,
    device: torch.device | str | None = None, resume: bool = True, log_tb: bool = True, show_progress: bool | None = None,
) -> dict[str, Any]:
    """Behaviour cloning on `episodes`; writes out_dir/{policy.pt, train_state.pt, config.json, metrics.json, tb/}.

    -> summary dict (final train/val metrics, steps/sec, paths).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device is not None else default_device()
    seed_everything(cfg.seed)
    save_json(out / "config.json", {"train": asdict(cfg), "action_stats": {k: np.asarray(v).tolist() for k, v in stats.items()}})
    tokenizer = ActionTokenizer.from_stats(stats, cfg.policy.num_bins)
    if tokenizer.action_dim != cfg.policy.action_dim:
        raise ValueError(f"stats: expected q01/q99 of {cfg.policy.action_dim} action dims, got {tokenizer.action_dim}")
    train_eps, val_eps = split_episodes(list(episodes), cfg.val_fraction, cfg.seed)
    policy = VLAPolicy(cfg.policy).to(dev)
    train_data = ChunkDataset(train_eps, tokenizer, cfg.policy.chunk_len)
    val_data = ChunkDataset(val_eps, tokenizer, cfg.policy.chunk_len) if val_eps else None
    train_instr = _instr_per_sample(policy, train_eps)
    val_instr = _instr_per_sample(policy, val_eps) if val_eps else None
    decay = [p for n, p in policy.named_parameters() if p.dim() >= 2 and "embed" not in n and "pos" not in n and "queries" not in n]
    no_decay = [p for n, p in policy.named_parameters() if not (p.dim() >= 2 and "embed" not in n and "pos" not in n and "queries" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95)
    )
    state = LoopState(out / "train_state.pt", "policy", policy, opt, cfg.seed)
    rng = state.rng
    step = state.resume() if resume else 0
    logger = ScalarLogger(out / "tb" if log_tb else None)
    autocast = amp_dtype(cfg, dev)
    print(f"[train-policy] {num_params(policy) / 1e6:.2f}M params, {len(train_data)} train / {len(val_data) if val_data else 0} val samples, device {dev}, from step {step}")

    policy.train()
    t0, s0 = time.perf_counter(), step
    last: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    for step in progress(range(step, cfg.steps), total=cfg.steps - step, desc="train-policy", disable=None if show_progress is None else not show_progress):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, cfg)
        idx = rng.integers(0, len(train_data), size=cfg.batch_size)
        f, tok, mask = train_data.batch(idx)
        x = _model_input(f, cfg.policy.image_size, dev, cfg.crop_pad)
        with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
            logits = policy.action_logits(x, train_instr[idx].to(dev))
        loss, m = bc_loss(logits, tok.to(dev), mask.to(dev))
        gnorm = optimizer_step(opt, loss, policy.parameters(), cfg.grad_clip)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            el = time.perf_counter() - t0
            last = {"train/loss": float(loss.detach()), "train/token_acc": float(m["token_acc"]), "train/action_l1": float(m["action_l1"]),
                    "train/grad_norm": float(gnorm), "train/lr": opt.param_groups[0]["lr"], "train/steps_per_sec": (done - s0) / max(el, 1e-9)}
            logger.scalars(last, done)
        if val_data is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            val_metrics = {f"val/{k}": v for k, v in evaluate_bc(policy, val_data, val_instr, cfg.batch_size).items()}
            logger.scalars(val_metrics, done)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            state.save(done)
            save_policy(out / "policy.pt", policy, tokenizer, cfg.policy, step=done)
    elapsed = time.perf_counter() - t0
    if not (out / "policy.pt").is_file():
        save_policy(out / "policy.pt", policy, tokenizer, cfg.policy, step=cfg.steps)
    logger.close()
    summary = {**last, **val_metrics, "steps": cfg.steps, "steps_this_run": cfg.steps - s0, "wall_s": elapsed,
               "policy_path": str(out / "policy.pt"), "params": num_params(policy), "device": str(dev)}
    save_json(out / "metrics.json", summary)
    policy.eval()
    return summary


def train_policy(cfg: PolicyTrainConfig, store_paths: Sequence[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike,
                 **kw: Any) -> dict[str, Any]:
    """Behaviour cloning on every episode of the given trajectory stores (keywords: train_policy_on_episodes)."""
    episodes, stats = load_episodes(store_paths)
    return train_policy_on_episodes(cfg, episodes, stats, out_dir, **kw)
