"""What the pipeline's stages share: the run's config, folders, device and logger, and the loaders
that turn a stage's recorded outputs back into models, environments and initial frames."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wmpo.config import RunConfig
from wmpo.dist import SINGLE, DistContext
from wmpo.pipeline.stages import StageRunner
from wmpo.utils.device import default_device
from wmpo.utils.logging import ScalarLogger


class Context:
    """The config, the output folders, the device, the logger, and earlier stages' outputs."""

    def __init__(self, cfg: RunConfig, out_dir: Path, runner: StageRunner, dist: DistContext = SINGLE, strategy: str = "ddp"):
        self.cfg = cfg
        self.out = out_dir
        self.runner = runner
        self.dist = dist  # the process group (torchrun); SINGLE in one process
        self.strategy = strategy  # the distributed GRPO update: ddp | fsdp2 | deepspeed
        self.device = default_device()  # this rank's GPU under NCCL (wmpo.dist.init_distributed sets WMPO_DEVICE)
        self.logger = ScalarLogger(out_dir / "tb" if dist.is_main else None)
        self.corpus_as_is = False
        """the corpus folder is used as it is (wmpo run --corpus-as-is)"""

    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def output(self, stage: str) -> dict:
        return self.runner.output(stage, self)

    # ------------------------------------------------------------------ loaders
    def load_policy(self, path: str):
        """(policy, tokenizer) of a policy checkpoint, on the run's device."""
        from wmpo.models.policy import load_policy

        return load_policy(path, self.device)

    def env_policy(self, policy, tokenizer, temperature):
        """The policy as the simulator's batched callable (frames, instructions) -> env action chunks."""
        from wmpo.models.policy import as_env_policy

        return as_env_policy(policy, tokenizer, temperature=temperature, device=self.device)

    def load_vae(self):
        """The run's VAE (stage `vae`), on the run's device, in eval mode."""
        from wmpo.models.vae import FrameVAE

        return FrameVAE.from_checkpoint(self.output("vae")["path"]).to(self.device).eval()

    def imagination_world_model(self) -> tuple[str, int]:
        """(checkpoint, Euler steps) WMPO imagines with: the few-step student when cfg.distill_wm, else the
        fine-tuned world model at cfg.sampler_steps."""
        if self.cfg.distill_wm:
            return self.output("distill_wm")["path"], self.cfg.student_steps
        return self.output("wm_finetune")["path"], self.cfg.sampler_steps

    def world_model_env(self, wm_path: str, steps: int | None = None):
        """The batched world-model environment of the run's VAE and the world model at `wm_path`
        (steps: Euler steps per chunk, default cfg.sampler_steps)."""
        from wmpo.models.world_model import WorldModel
        from wmpo.rollout.world_model_env import WorldModelEnv

        cfg = self.cfg
        wm = WorldModel.from_checkpoint(wm_path).to(self.device).eval()
        return WorldModelEnv(self.load_vae(), wm, steps=steps or cfg.sampler_steps, num_context=cfg.world_model.num_context,
                             t_context=cfg.world_model.t_context, device=self.device)

    def success_detector(self, reward_path: str):
        """The reward model at `reward_path` as an incremental success detector over rollout.num_slots rows."""
        from wmpo.models.reward import IncrementalSuccess, load_reward

        return IncrementalSuccess(load_reward(reward_path, self.device).eval(), self.cfg.rollout.num_slots, self.device)

    def imagination_engine(self, policy, tokenizer, wm_path: str, reward_path: str):
        """The imagination engine of `policy` in the world model at `wm_path`, judged by the reward model."""
        from wmpo.rollout.engine import ImaginationEngine

        return ImaginationEngine(self.world_model_env(wm_path), policy, self.success_detector(reward_path), tokenizer, self.cfg.rollout)

    def initial_frames(self, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(states [n, S], first frames uint8 [n, H, W, 3]) of the task's `split` initial states, cached."""
        from wmpo.sim import make_env
        from wmpo.sim.initial_states import get_initial_states

        cache = self.path("data", f"initial_{split}_{n}.npz")
        if cache.is_file():
            z = np.load(cache)
            return z["states"], z["frames"]
        states = get_initial_states(self.cfg.task, split, n)
        env = make_env(self.cfg.task, image_size=self.cfg.image_size, seed=self.cfg.seed)
        try:
            frames = np.stack([env.reset_to(s) for s in states])
        finally:
            env.close()
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, states=states, frames=frames)
        os.replace(tmp, cache)
        return states, frames

    # ------------------------------------------------------------------ WMPO
    def train_wmpo(self, policy, tok, wm_path: str, reward_path: str, out_dir: Path, tag: str = "wmpo",
                   dist: DistContext | None = None, steps: int | None = None) -> list[dict]:
        """WMPO (wmpo.rl.wmpo, Algorithm 1) with the run's world model, reward model and training initial
        states; resumable from out_dir/state.pt. Updates `policy` in place; -> per-iteration records.
        dist: the ranks that call this together (default: the run's; SINGLE from a stage rank 0 runs alone).
        steps: Euler steps per imagined chunk (default cfg.sampler_steps; the student's with distill_wm)."""
        dist = self.dist if dist is None else dist
        import torch

        from wmpo.rl.wmpo import wmpo_train
        from wmpo.sim import TASKS
        from wmpo.utils.frames import uint8_to_model

        cfg = self.cfg
        spec = TASKS[cfg.task]
        _, frames = self.initial_frames("train", cfg.num_initial_states)
        pool = uint8_to_model(torch.as_tensor(frames)).to(self.device)
        return wmpo_train(self.world_model_env(wm_path, steps), policy, tok, self.success_detector(reward_path), pool, spec.instruction,
                          grpo=cfg.grpo, rollout=cfg.rollout, iterations=cfg.wmpo_iterations, horizon=cfg.imagined_horizon or spec.horizon,
                          seed=cfg.seed, state_path=Path(out_dir) / "state.pt", logger=self.logger, tag=tag,
                          real_eval=self.real_eval_curve(tok, dist), real_eval_every=cfg.wmpo_real_eval_every,
                          dist=dist, strategy=self.strategy)

    @property
    def has_real_eval_curve(self) -> bool:
        """Whether WMPO's training curve has real checks (RunConfig.wmpo_real_eval_every > 0)."""
        return self.cfg.wmpo_real_eval_every > 0

    def real_eval_curve(self, tok, dist: DistContext):
        """Greedy real-simulator success on a fixed set of held-out training states (the WMPO curve's
        real check; the evaluation states stay untouched until the final comparison). None: no curve."""
        cfg = self.cfg
        if not self.has_real_eval_curve:
            return None
        from wmpo.sim.evaluate_ranks import evaluate_across_ranks

        first = max(1, cfg.real_budget // cfg.grpo.group_size)
        states, _ = self.initial_frames("train", first + cfg.wmpo_real_eval_episodes)

        def real_eval(policy) -> dict[str, float]:
            r = evaluate_across_ranks(self.env_policy(policy, tok, None), cfg.task, dist, init_states=states[first:],
                                      split="train-heldout", num_workers=cfg.num_workers, image_size=cfg.image_size,
                                      max_steps=cfg.max_episode_steps, show_progress=False)
            return {"success_rate": r.success_rate, "episodes": r.n}

        return real_eval
