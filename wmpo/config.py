"""Run configuration of the whole pipeline, and its presets.

Each component owns its config dataclass in its own module; `RunConfig` composes them. Presets:
  micro  a few steps of every stage (CI's end-to-end test, ~2 min on 2 cores)
  tiny   CPU, the whole pipeline in minutes: a smoke test, its numbers are not claims
  cpu    the CPU science recipe (64x64, corpus-pretrained world model, P = 128): tens of CPU-hours
  small  one GPU, under an hour
  paper  the paper's configuration (Tables 3-4; 256x256 frames, DiT 1152 x 28+28)
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from wmpo.data.episode import ACTION_DIM  # D: action dimensions (the episode record's)
from wmpo.models.policy import PolicyConfig
from wmpo.ops.action_logprob import NUM_BINS  # action bins per dimension (policy head, tokenizer, op)
from wmpo.models.reward import RewardConfig
from wmpo.models.vae import VAEConfig
from wmpo.models.world_model import WorldModelConfig
from wmpo.rl.dpo import DPOConfig
from wmpo.rl.grpo import GRPOConfig
from wmpo.rl.online import OnlineGRPOConfig
from wmpo.rollout.engine import RolloutConfig
from wmpo.train.distill import DistillConfig
from wmpo.train.policy import PolicyTrainConfig
from wmpo.train.reward import RewardTrainConfig
from wmpo.train.vae import VAETrainConfig
from wmpo.train.world_model import WMTrainConfig

# The values several components share, each written once (here, or where the lowest layer that
# needs it defines it: D with the episode record, the bins with the action_logprob op) and passed
# to every config that needs it (paper Tables 3-4). Component dataclass defaults are for standalone use.
CHUNK_LEN = 8
"""K: actions per chunk = frames the world model predicts per step = the policy's action queries"""
NUM_CONTEXT = 4
"""c: context frames of the world model"""
GROUP_SIZE = 8
"""G: trajectories per initial state in GRPO (WMPO, online GRPO, real rollouts)"""
TEMPERATURE = 1.6
"""policy sampling temperature during GRPO (imagined and real)"""


@dataclass
class RunConfig:
    task: str = "square"
    """square | stack_three | three_piece_assembly | coffee"""
    preset: str = "paper"
    """name of the preset these values came from (recorded in the report)"""
    seed: int = 0
    """seed of every stage (demos, training, sampling)"""
    image_size: int = 256
    """rendered frame size (square); the world model and VAE work at this size"""
    num_workers: int = 2
    """simulator worker processes for collection and evaluation"""
    num_demos: int = 300
    """expert demonstrations collected for pretraining and SFT"""
    real_budget: int = 128
    """P: real rollouts of the base policy (world-model / reward fine-tuning data; baselines' budget)"""
    num_initial_states: int = 128
    """training initial states used for imagined (and real) group sampling"""
    eval_episodes: int = 128
    """episodes on the evaluation initial states per evaluated policy"""
    max_episode_steps: int | None = None
    """cap on real episode length (None: the task's horizon); tiny presets shorten it"""
    imagined_horizon: int | None = None
    """length of imagined trajectories in steps (None: the task's horizon)"""
    sampler_steps: int = 30
    """Euler steps per imagined chunk at rollout"""
    wmpo_iterations: int = 20
    """GRPO updates, each on a fresh batch of imagined groups"""
    num_videos: int = 4
    """mp4s written per evaluated policy and of imagined vs real rollouts"""
    baselines: bool = False
    """also run online GRPO and DPO on the same budget P"""
    lifelong_rounds: int = 0
    """lifelong WMPO rounds after the first WMPO stage (paper 4.5: 3); each collects P more real rollouts"""
    corpus_dir: str | None = None
    """world-model pretraining corpus folder (`wmpo corpus`; None: <out>/corpus). Not counted in P"""
    corpus_episodes_per_task: int = 0
    """perturbed-expert episodes per task in the corpus (0: no corpus; pretrain on the demos alone)"""
    corpus_tasks: tuple[str, ...] = ("square", "stack_three", "three_piece_assembly", "coffee")
    """tasks of the multi-task pretraining corpus"""
    heldout_episodes: int = 0
    """real base-policy episodes on training states never trained on (diagnostics only; 0: no diagnostics)"""
    wmpo_real_eval_every: int = 0
    """every this many WMPO iterations, a greedy real-simulator evaluation on a fixed set of held-out
    *training* states joins the training curve (0: none); never used to select anything"""
    wmpo_real_eval_episodes: int = 16
    """states of that curve: the held-out stage's first ones (training split, after P's states)"""
    diagnostic_sampler_steps: tuple[int, ...] = ()
    """extra Euler step counts at which world-model fidelity is also measured (the rollout's is always)"""
    distill_wm: bool = False
    """distil the fine-tuned world model into a few-step student (`wmpo distill-wm`, stage distill_wm) and
    imagine WMPO's rollouts with it at student_steps"""
    student_steps: int = 4
    """Euler steps per imagined chunk of the few-step student (with distill_wm)"""
    vae_train: VAETrainConfig = field(default_factory=VAETrainConfig)
    """VAE architecture and training"""
    wm_pretrain: WMTrainConfig = field(default_factory=WMTrainConfig)
    """world-model architecture and pretraining on expert demos"""
    wm_finetune: WMTrainConfig = field(default_factory=WMTrainConfig)
    """fine-tuning on the base policy's rollouts (policy behaviour alignment); model fields ignored"""
    policy_train: PolicyTrainConfig = field(default_factory=PolicyTrainConfig)
    """VLA architecture and behaviour cloning"""
    reward_train: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    """VideoMAE reward model architecture and training"""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """WMPO's GRPO (paper Table 4)"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """imagination engine (slots, graphs, compile)"""
    online: OnlineGRPOConfig = field(default_factory=OnlineGRPOConfig)
    """online GRPO baseline in the real simulator"""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """offline DPO baseline"""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """shortcut distillation of the world model into the few-step student (with distill_wm)"""

    @property
    def world_model(self) -> WorldModelConfig:
        return self.wm_pretrain.model


def _vae(size: int, channels: tuple[int, ...], layers: int, groups: int, attn: bool) -> VAEConfig:
    return VAEConfig(frame_size=size, latent_channels=4, block_channels=channels, layers_per_block=layers, norm_groups=groups, mid_attention=attn)


def _wm(latent: int, hidden: int, blocks: int, heads: int, patch: int = 2) -> WorldModelConfig:
    return WorldModelConfig(latent_channels=4, latent_size=latent, patch=patch, hidden=hidden, spatial_blocks=blocks, temporal_blocks=blocks,
                            heads=heads, num_context=NUM_CONTEXT, chunk_len=CHUNK_LEN, action_dim=ACTION_DIM, t_context=0.05)


def _policy(**arch: Any) -> PolicyConfig:
    return PolicyConfig(chunk_len=CHUNK_LEN, action_dim=ACTION_DIM, num_bins=NUM_BINS, **arch)


def _grpo(group_size: int = GROUP_SIZE, **kw: Any) -> GRPOConfig:
    return GRPOConfig(group_size=group_size, temperature=TEMPERATURE, **kw)


def _rollout(group_size: int = GROUP_SIZE, **kw: Any) -> RolloutConfig:
    return RolloutConfig(group_size=group_size, temperature=TEMPERATURE, **kw)


def _preset_paper(task: str) -> RunConfig:
    wm = _wm(32, 1152, 28, 16)
    return RunConfig(
        task=task, preset="paper", image_size=256, num_workers=16, num_demos=300, real_budget=128, eval_episodes=128,
        sampler_steps=30, wmpo_iterations=20,
        vae_train=VAETrainConfig(vae=_vae(256, (128, 256, 512, 512), 2, 32, True), steps=20000, batch_size=32, lr=1e-4),
        # 393k tokens per step through 56 blocks: activation checkpointing + 4 micro-batches fit one 80 GB GPU
        wm_pretrain=WMTrainConfig(model=wm, steps=100000, batch_size=128, lr=1e-4, grad_clip=0.1, ema_decay=0.9999,
                                  grad_accum=4, grad_checkpointing=True),
        wm_finetune=WMTrainConfig(model=wm, steps=30000, batch_size=128, lr=1e-4, grad_clip=0.1, ema_decay=0.9999,
                                  grad_accum=4, grad_checkpointing=True),
        policy_train=PolicyTrainConfig(policy=_policy(image_size=224, patch_size=16, hidden_size=768, num_heads=12, vision_layers=12,
                                                           instr_layers=2, fusion_layers=6), steps=50000, batch_size=256, lr=3e-4,
                                       warmup_steps=1000, crop_pad=12),
        reward_train=RewardTrainConfig(reward=RewardConfig(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12),
                                       steps=10000, batch_size=64, lr=1e-4, warmup_steps=500, crop_pad=12),
        grpo=_grpo(batch_size=512, minibatch_size=128),
        rollout=_rollout(num_slots=128, cuda_graph=True),
        online=OnlineGRPOConfig(budget=128, num_envs=16, image_size=256),
    )


def _preset_small(task: str) -> RunConfig:
    wm = _wm(16, 384, 8, 6)
    return RunConfig(
        task=task, preset="small", image_size=128, num_workers=8, num_demos=300, real_budget=128, eval_episodes=128,
        sampler_steps=8, wmpo_iterations=10,
        vae_train=VAETrainConfig(vae=_vae(128, (64, 128, 256, 256), 2, 32, True), steps=5000, batch_size=32, lr=1e-4),
        wm_pretrain=WMTrainConfig(model=wm, steps=20000, batch_size=32, lr=1e-4, grad_clip=0.1, ema_decay=0.999),
        wm_finetune=WMTrainConfig(model=wm, steps=5000, batch_size=32, lr=1e-4, grad_clip=0.1, ema_decay=0.999),
        policy_train=PolicyTrainConfig(policy=_policy(image_size=96, patch_size=8, hidden_size=256, num_heads=4, vision_layers=6,
                                                           instr_layers=2, fusion_layers=3), steps=8000, batch_size=128, lr=5e-4, warmup_steps=200),
        reward_train=RewardTrainConfig(reward=RewardConfig(image_size=96, patch_size=16, hidden_size=256, num_layers=4, num_heads=4),
                                       steps=3000, batch_size=32, lr=3e-4, warmup_steps=100),
        grpo=_grpo(batch_size=64, minibatch_size=16, lr=1e-5),
        rollout=_rollout(num_slots=64, cuda_graph=True),
        online=OnlineGRPOConfig(budget=128, num_envs=16, image_size=128, grpo=_grpo(batch_size=64, minibatch_size=16, lr=1.25e-6)),
    )


def _preset_tiny(task: str) -> RunConfig:
    wm = _wm(16, 64, 2, 4)
    pol = _policy(image_size=32, patch_size=8, hidden_size=64, num_heads=4, vision_layers=2, instr_layers=1, fusion_layers=2, max_instr_len=48)
    rew = RewardConfig(image_size=32, patch_size=8, tubelet_size=2, hidden_size=64, num_layers=2, num_heads=4)
    return RunConfig(
        task=task, preset="tiny", image_size=64, num_workers=2, num_demos=16, real_budget=16, num_initial_states=16, eval_episodes=10,
        max_episode_steps=None, imagined_horizon=96, sampler_steps=4, wmpo_iterations=2, num_videos=2,
        vae_train=VAETrainConfig(vae=_vae(64, (16, 32, 32), 1, 8, False), steps=150, batch_size=8, lr=2e-3, log_every=25, ckpt_every=100),
        wm_pretrain=WMTrainConfig(model=wm, steps=250, batch_size=8, lr=3e-4, grad_clip=1.0, ema_decay=0.99, ema_warmup=True, log_every=25,
                                  ckpt_every=100),
        wm_finetune=WMTrainConfig(model=wm, steps=60, batch_size=8, lr=3e-4, grad_clip=1.0, ema_decay=0.9, ema_warmup=True, log_every=20,
                                  ckpt_every=100),
        policy_train=PolicyTrainConfig(policy=pol, steps=1500, batch_size=32, lr=1e-3, warmup_steps=50, min_lr_ratio=0.3, crop_pad=2,
                                       eval_every=500, ckpt_every=500),
        reward_train=RewardTrainConfig(reward=rew, steps=400, batch_size=16, lr=5e-4, warmup_steps=30, crop_pad=2, eval_every=0, ckpt_every=200),
        grpo=_grpo(4, batch_size=16, minibatch_size=8, lr=1e-4),
        rollout=_rollout(4, num_slots=16, max_groups_factor=3.0),
        online=OnlineGRPOConfig(budget=16, num_envs=8, image_size=64, num_initial_states=16,
                                grpo=_grpo(4, batch_size=8, minibatch_size=4, lr=1.25e-5)),
        dpo=DPOConfig(epochs=2, pairs_per_step=8, lr=1e-4),
    )


def _preset_micro(task: str) -> RunConfig:
    cfg = _preset_tiny(task)
    wm = _wm(8, 32, 1, 2)
    return replace(
        cfg, preset="micro", image_size=32, num_workers=1, num_demos=2, real_budget=8, num_initial_states=4, eval_episodes=2,
        max_episode_steps=24, imagined_horizon=16, sampler_steps=2, wmpo_iterations=1, num_videos=1,
        corpus_episodes_per_task=1, corpus_tasks=("square", "coffee"), heldout_episodes=2, diagnostic_sampler_steps=(3,),
        wmpo_real_eval_every=1, wmpo_real_eval_episodes=2,
        distill_wm=True, student_steps=1, distill=DistillConfig(steps=2, batch_size=2, base_steps=4, log_every=1, ckpt_every=1000),
        vae_train=replace(cfg.vae_train, vae=_vae(32, (8, 16, 16), 1, 4, False), steps=4, batch_size=4),
        wm_pretrain=replace(cfg.wm_pretrain, model=wm, steps=4, batch_size=2),
        wm_finetune=replace(cfg.wm_finetune, model=wm, steps=2, batch_size=2),
        policy_train=replace(cfg.policy_train, policy=replace(cfg.policy_train.policy, hidden_size=32, num_heads=2, vision_layers=1, fusion_layers=1),
                             steps=4, batch_size=8, eval_every=1000),
        reward_train=replace(cfg.reward_train, reward=replace(cfg.reward_train.reward, hidden_size=32, num_layers=1, num_heads=2),
                             steps=4, batch_size=4, eval_every=1000),
        grpo=_grpo(4, batch_size=8, minibatch_size=4, lr=1e-4),
        rollout=_rollout(4, num_slots=8, max_groups_factor=2.0),
        online=replace(cfg.online, budget=8, num_envs=4, image_size=32, num_initial_states=4,
                       grpo=_grpo(4, batch_size=4, minibatch_size=4, lr=1e-5)),
        dpo=DPOConfig(epochs=1, pairs_per_step=4, lr=1e-4),
    )


def _preset_cpu(task: str) -> RunConfig:
    """The CPU science recipe (issue: a Table-1-style result on this CPU). Base policy: the per-task
    recipe of bench/base_policy.py (64x64, 1.3M-parameter VLA). World model: pretrained on a multi-task
    perturbed-expert corpus + the demos, then aligned on the P = 128 base-policy rollouts.

    Sized by measurement on the 2-core machine (docs/science.md, "Cost"): a training step of the
    world model costs ~0.3 s with patch 4 (16 tokens per 64x64 frame) against ~4 s with patch 2 at
    batch 16, and a 1.25M-parameter VAE ~2 s per batch of 16; the recipe spends its CPU-hours on
    data and world-model steps, and spans machines (experiments/persist.py, `--corpus-as-is`)."""
    wm = _wm(16, 128, 6, 4, patch=4)
    pol = _policy(image_size=64, patch_size=8, hidden_size=128, num_heads=4, vision_layers=3, instr_layers=1, fusion_layers=2,
                       max_instr_len=48)
    rew = RewardConfig(image_size=64, patch_size=8, tubelet_size=2, hidden_size=128, num_layers=3, num_heads=4)
    return RunConfig(
        task=task, preset="cpu", image_size=64, num_workers=2, num_demos=100, real_budget=128, num_initial_states=128,
        eval_episodes=128, max_episode_steps=None, imagined_horizon=None, sampler_steps=10, wmpo_iterations=16, num_videos=4,
        corpus_episodes_per_task=300, heldout_episodes=48, diagnostic_sampler_steps=(30,), wmpo_real_eval_every=4,
        wmpo_real_eval_episodes=24,
        vae_train=VAETrainConfig(vae=_vae(64, (16, 32, 64), 1, 8, False), steps=3000, batch_size=16, lr=5e-4, log_every=100,
                                 ckpt_every=250),
        wm_pretrain=WMTrainConfig(model=wm, steps=6000, batch_size=16, lr=3e-4, grad_clip=1.0, ema_decay=0.999, log_every=100,
                                  ckpt_every=100, lr_schedule="cosine", warmup_steps=300, min_lr_ratio=0.1),
        wm_finetune=WMTrainConfig(model=wm, steps=6000, batch_size=16, lr=2e-4, grad_clip=1.0, ema_decay=0.995, log_every=100,
                                  ckpt_every=100, lr_schedule="cosine", warmup_steps=200, min_lr_ratio=0.1),
        policy_train=PolicyTrainConfig(policy=pol, steps=3000, batch_size=64, lr=5e-4, warmup_steps=100, min_lr_ratio=0.1,
                                       crop_pad=4, log_every=100, eval_every=500, ckpt_every=500),
        reward_train=RewardTrainConfig(reward=rew, steps=2000, batch_size=16, lr=3e-4, warmup_steps=100, crop_pad=4, eval_every=0,
                                       ckpt_every=250),
        grpo=_grpo(batch_size=64, minibatch_size=32, lr=3e-5),
        rollout=_rollout(num_slots=64, max_groups_factor=4.0),
        online=OnlineGRPOConfig(budget=128, num_envs=8, image_size=64, num_initial_states=128,
                                grpo=_grpo(batch_size=32, minibatch_size=16, lr=3e-5)),
        dpo=DPOConfig(epochs=3, pairs_per_step=16, lr=3e-5),
    )


PRESETS = {"micro": _preset_micro, "tiny": _preset_tiny, "cpu": _preset_cpu, "small": _preset_small, "paper": _preset_paper}


def get_preset(name: str, task: str = "square", **overrides: Any) -> RunConfig:
    """The preset `name` for `task`, with top-level fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    cfg = PRESETS[name](task)
    known = {f.name for f in fields(RunConfig)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"overrides: unknown RunConfig fields {sorted(bad)}")
    cfg = replace(cfg, **overrides)
    cfg.wm_finetune = replace(cfg.wm_finetune, model=cfg.wm_pretrain.model)  # fine-tuning keeps the architecture
    check_consistent(cfg)
    return cfg


def check_consistent(cfg: RunConfig) -> None:
    """The shared values (K, D, bins, G, temperature) agree across the sections; else a ValueError
    naming both fields (an override must change every section that carries the value)."""
    wm, pol = cfg.world_model, cfg.policy_train.policy
    if isinstance(cfg.student_steps, bool) or not isinstance(cfg.student_steps, int) or cfg.student_steps < 1:
        raise ValueError(f"student_steps: expected an int >= 1 (Euler steps of the few-step student), got {cfg.student_steps!r}")
    if cfg.distill_wm:
        cfg.distill.check()
    pairs = [
        ("policy_train.policy.chunk_len", pol.chunk_len, "wm_pretrain.model.chunk_len", wm.chunk_len),
        ("policy_train.policy.action_dim", pol.action_dim, "wm_pretrain.model.action_dim", wm.action_dim),
        ("rollout.group_size", cfg.rollout.group_size, "grpo.group_size", cfg.grpo.group_size),
        ("online.grpo.group_size", cfg.online.grpo.group_size, "grpo.group_size", cfg.grpo.group_size),
        ("rollout.temperature", cfg.rollout.temperature, "grpo.temperature", cfg.grpo.temperature),
        ("online.grpo.temperature", cfg.online.grpo.temperature, "grpo.temperature", cfg.grpo.temperature),
    ]
    for a, va, b, vb in pairs:
        if va != vb:
            raise ValueError(f"{a}: expected {vb} (as {b}), got {va}")


def is_config(x: Any) -> bool:
    return is_dataclass(x) and not isinstance(x, type)
