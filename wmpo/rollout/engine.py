"""The imagination engine: the one rollout loop for GRPO, imagined evaluation, videos and benchmarks.

A policy acts inside a world-model environment, judged by an incremental success detector, for many
trajectories at once. The pieces: slot state and the one host sync per chunk (`slots`), the chunk and
how it runs: eager, torch.compile or a CUDA graph (`chunk`), GRPO group sampling with continuous
batching and dynamic sampling (`group_sampler`). This module holds the configuration and the two
entry points: `sample_groups` (GRPO) and `rollout_fixed` (one trajectory per initial frame).

Host syncs: exactly one per chunk in `sample_groups` (a named `SyncRecord`), one bool per chunk in
`rollout_fixed(..., early_exit=True)`, none inside the loop with `early_exit=False`.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from wmpo.data.batch import TrajectoryBatch
from wmpo.rollout.chunk import ChunkRunner, PhaseTimer
from wmpo.rollout.group_sampler import GroupSampler
from wmpo.rollout.slots import SlotPool, SlotState
from wmpo.utils.checks import check_tensor
from wmpo.utils.device import module_device
from wmpo.utils.frames import model_to_uint8, uint8_to_model
from wmpo.utils.logging import warn_once


@dataclass
class RolloutConfig:
    num_slots: int = 64
    """trajectories advanced together per chunk in sample_groups (the static batch size)"""
    max_steps: int = 512
    """default horizon in env steps (frames) when a call gives none; chunks = ceil(max_steps / K)"""
    temperature: float = 1.6
    """default sampling temperature (paper Table 4)"""
    group_size: int = 8
    """default G, trajectories per initial state (paper Table 4)"""
    max_groups_factor: float = 8.0
    """sample_groups gives up after max_groups_factor * (B / G) groups tried (reported in stats)"""
    cuda_graph: bool = False
    """capture one whole chunk (policy + world model + decode + reward + bookkeeping) in a CUDA graph
    (CUDA only; components must keep their state in static buffers); falls back to eager with a warning"""
    compile_chunk: bool = False
    """torch.compile the world model's denoiser step (wmpo.accel.CompiledDenoiser), not the whole
    chunk; a compilation failure warns once and runs eager (CUDA; on CPU only with compile_on_cpu)"""
    compile_mode: str = "default"
    """torch.compile mode for compile_chunk ("max-autotune-no-cudagraphs" tunes for minutes)"""
    compile_on_cpu: bool = False
    """allow compile_chunk on the CPU (slow to compile; for testing)"""
    graph_warmup: int = 2
    """eager chunks run before capturing the CUDA graph"""
    profile: bool = False
    """synchronize around each phase and accumulate per-phase time (world_model / vae / policy /
    reward / host) into stats['time']; perturbs throughput, for benchmarks only"""
    output_device: str | None = None
    """where finished trajectories are stored (None: the engine's device)"""
    inference_dtype: str = "bf16"
    """on CUDA, the chunk (policy, world model, VAE, reward) runs under bf16 autocast ("bf16", about 10x
    faster than fp32 with TF32 off) or in the models' own dtype ("fp32"); no effect on the CPU"""
    bf16_weights: bool = True
    """on CUDA with inference_dtype "bf16": the frozen models (world model, VAE, reward model) are stored
    in bf16 at the first rollout (half their memory, no per-call weight casts under autocast); the
    policy keeps its fp32 weights (GRPO trains it). No effect on the CPU or with "fp32"."""
    memory_plan: bool | None = None
    """print the device-memory plan (wmpo.accel.memory_plan) at the start of a rollout and bound the
    VAE decode batch by it when the env has none; None: on CUDA devices only"""

    def __post_init__(self) -> None:
        if self.inference_dtype not in ("bf16", "fp32"):
            raise ValueError(f"inference_dtype: expected 'bf16' or 'fp32', got {self.inference_dtype!r}")


def _accepts_rows(env: Any) -> bool:
    """Whether a world-model env's reset_slots takes `rows` (a user's env may not)."""
    import inspect

    try:
        return "rows" in inspect.signature(env.reset_slots).parameters
    except (TypeError, ValueError):
        return False


class ImaginationEngine:
    """Roll a policy out inside a world-model env, judged by an incremental success detector.

    wm_env: reset(frames), reset_slots(mask, frames), step(actions, decode) (wmpo.rollout.world_model_env).
    policy: wmpo.models.protocol.Policy. success_detector: reset_slots(mask, frames), update(frames)
    -> (success [B], first_success_frame [B]) (wmpo.models.reward.IncrementalSuccess), or None.
    tokenizer: detokenize(tokens [N, K, D]) -> normalized actions in [-1, 1]; with q01/q99 (ActionTokenizer)
    its actions are mapped into the world model's action space (wmpo.rollout.action_map).
    """

    def __init__(self, wm_env: Any, policy: Any, success_detector: Any, tokenizer: Any, cfg: RolloutConfig | None = None):
        self.wm_env = wm_env
        self.policy = policy
        self.detector = success_detector
        self.tokenizer = tokenizer
        self.cfg = cfg or RolloutConfig()
        dev = getattr(wm_env, "device", None) or module_device(policy) or torch.device("cpu")
        self.device = torch.device(dev)
        self.K = int(policy.chunk_len)
        self.D = int(policy.action_dim)
        self._env_takes_rows = _accepts_rows(wm_env)  # once: start_rows runs at every refill
        self.runner = ChunkRunner(wm_env, policy, success_detector, tokenizer, self.cfg, self.device,
                                  compile_denoiser=self._compile_denoiser)
        self.slots = SlotPool(self.device, self.K, self.D)
        self._denoiser_compiled = False
        self._planned: set[tuple[int, int]] = set()
        self.last_memory_plan = None

    # ------------------------------------------------------------------ inputs
    def prepare_pool(self, initial_frames: torch.Tensor, instructions: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pool uint8 [I, H, W, 3] on device, instr [I, L] int64 on device)."""
        check_tensor("initial_frames", initial_frames, ndim=4)
        if initial_frames.dtype == torch.uint8:
            if initial_frames.shape[-1] != 3:
                raise ValueError(f"initial_frames: expected uint8 [I, H, W, 3], got {tuple(initial_frames.shape)}")
            pool = initial_frames.to(self.device)
        elif initial_frames.is_floating_point():
            if initial_frames.shape[1] != 3:
                raise ValueError(f"initial_frames: expected float [I, 3, H, W], got {tuple(initial_frames.shape)}")
            pool = model_to_uint8(initial_frames.to(self.device))
        else:
            raise ValueError(f"initial_frames: expected uint8 [I,H,W,3] or float [I,3,H,W], got dtype {initial_frames.dtype}")
        n = pool.shape[0]
        if isinstance(instructions, str):
            instructions = [instructions] * n
        instructions = list(instructions)
        if len(instructions) == 1 and n > 1:
            instructions = instructions * n
        if len(instructions) != n:
            raise ValueError(f"instructions: expected 1 or {n} strings (one per initial frame), got {len(instructions)}")
        instr = self.policy.encode_instructions(instructions, device=self.device).to(self.device)
        return pool, instr

    def check_detector(self, rows: int, what: str) -> None:
        n = getattr(self.detector, "batch_size", None)
        if self.detector is not None and n is not None and n != rows:
            raise ValueError(f"success_detector: expected batch_size {rows} ({what}), got {n}")

    def env_reset(self, first_frames: torch.Tensor) -> None:
        """Reset every row of the env; reuse its buffers (reset_slots) when the batch size is unchanged,
        so a captured chunk stays valid; a reallocating reset drops the captured graph."""
        B = first_frames.shape[0]
        if getattr(self.wm_env, "batch_size", None) == B:
            self.wm_env.reset_slots(torch.ones(B, dtype=torch.bool, device=self.device), first_frames)
        else:
            self.wm_env.reset(first_frames)
            self.runner.invalidate()

    def start_rows(self, st: SlotState, mask: torch.Tensor, first_u8: torch.Tensor, instr: torch.Tensor, traj: torch.Tensor,
                   rows: torch.Tensor | None = None) -> None:
        """Start new trajectories in the slots where `mask` (device bool [S]): env, detector and slot
        state rows reset; device ops only. `rows` (the indices where mask is True, when the caller
        knows them): the world model's VAE encodes only those first frames, not all S."""
        first_in = uint8_to_model(first_u8, dtype=st.cur_in.dtype)
        if rows is not None and self._env_takes_rows:
            self.wm_env.reset_slots(mask, first_in, rows=rows)
        else:
            self.wm_env.reset_slots(mask, first_in)
        if self.detector is not None:
            self.detector.reset_slots(mask, first_in)
        st.reset_rows(mask, first_u8, first_in, instr, traj)

    # ------------------------------------------------------------------ device memory, compilation
    def plan_memory(self, slots: int, horizon_chunks: int):
        """-> wmpo.accel.memory_plan.MemoryPlan of this engine's env and models (None: not a WorldModelEnv)."""
        if not (hasattr(self.wm_env, "wm") and hasattr(self.wm_env, "vae")):
            return None
        wm = self.wm_env.wm
        if not hasattr(getattr(wm, "cfg", None) or getattr(getattr(wm, "world_model", None), "cfg", None), "hidden"):
            return None  # not a wmpo DiT (e.g. a DenoiserWorldModel): its memory cannot be planned from its config
        from wmpo.accel.memory_plan import plan_for_env

        extra = {"policy": self.policy}
        if self.detector is not None and isinstance(getattr(self.detector, "model", None), torch.nn.Module):
            extra["reward"] = self.detector.model
        dtype = "bf16" if self.cfg.inference_dtype == "bf16" else "fp32"
        return plan_for_env(self.wm_env, slots=slots, horizon_chunks=horizon_chunks, extra_models=extra, dtype=dtype)

    def frozen_models(self) -> dict[str, torch.nn.Module]:
        """The models a rollout only reads (never trained by it): the env's world model and VAE, the
        detector's reward model, when they are modules."""
        out = {}
        for name, owner, attr in (("world_model", self.wm_env, "wm"), ("vae", self.wm_env, "vae"), ("reward", self.detector, "model")):
            m = getattr(owner, attr, None) if owner is not None else None
            if isinstance(m, torch.nn.Module):
                out[name] = m
        return out

    def store_frozen_weights(self, dtype: torch.dtype) -> dict[str, int]:
        """Cast the frozen models' weights to `dtype` in place (inputs are cast by each model to its own
        dtype); drops a compiled / captured chunk, which held the old weights. -> bytes per model after."""
        out = {}
        for name, m in self.frozen_models().items():
            m.to(dtype)
            out[name] = sum(p.numel() * p.element_size() for p in m.parameters())
        self.runner.invalidate()
        return out

    def _apply_frozen_dtype(self) -> None:
        """Once, on CUDA with bf16 inference and cfg.bf16_weights: the frozen models to bf16."""
        if getattr(self, "_frozen_dtype_done", False):
            return
        self._frozen_dtype_done = True
        if self.device.type == "cuda" and self.cfg.inference_dtype == "bf16" and self.cfg.bf16_weights:
            self.store_frozen_weights(torch.bfloat16)

    def _apply_memory_plan(self, slots: int, horizon_chunks: int) -> None:
        """Once per (slots, horizon): print the plan and bound the VAE decode batch (if the env has none)."""
        self._apply_frozen_dtype()
        want = self.cfg.memory_plan if self.cfg.memory_plan is not None else self.device.type == "cuda"
        if not want or (slots, horizon_chunks) in self._planned:
            return
        self._planned.add((slots, horizon_chunks))
        plan = self.plan_memory(slots, horizon_chunks)
        if plan is None:
            return
        self.last_memory_plan = plan
        print(f"[wmpo.rollout] {slots} slots, {horizon_chunks} chunks: " + plan.table(), file=sys.stderr, flush=True)
        if not plan.fits:
            warn_once(f"rollout-memory-{slots}", f"wmpo.rollout: the memory plan for {slots} slots does not fit "
                      f"({plan.peak / 1e9:.1f} GB > {plan.budget / 1e9:.1f} GB); lower RolloutConfig.num_slots")
        if getattr(self.wm_env, "vae_max_batch", 0) is None and plan.vae_decode_batch >= 1:
            self.wm_env.vae_max_batch = plan.vae_decode_batch

    def _compile_denoiser(self) -> None:
        """Once: the env's world model -> CompiledDenoiser (its denoiser step compiled, eager fallback)."""
        if self._denoiser_compiled:
            return
        self._denoiser_compiled = True
        wm = getattr(self.wm_env, "wm", None)
        if wm is None or not hasattr(wm, "forward_cached"):
            warn_once("rollout-compile-no-denoiser", "wmpo.rollout: compile_chunk: the world-model env has no "
                      "denoiser (.wm with forward_cached) to compile; running eager")
            return
        from wmpo.accel.compiled import CompiledDenoiser

        self.wm_env.wm = CompiledDenoiser(wm, mode=self.cfg.compile_mode)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def sample_groups(
        self,
        initial_frames: torch.Tensor,
        instructions: list[str] | str,
        *,
        group_size: int | None = None,
        num_trajectories: int,
        temperature: float | None = None,
        max_steps: int | None = None,
        dynamic_sampling: bool = True,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        max_groups: int | None = None,
    ) -> tuple[TrajectoryBatch, dict[str, Any]]:
        """GRPO group sampling with continuous batching and dynamic sampling.

        temperature None: cfg.temperature; 0: greedy (old_logp then at temperature 1, Policy protocol).
        -> (TrajectoryBatch of exactly num_trajectories trajectories from complete kept groups, in
        order of group completion; group ids 0..B/G-1; or fewer if max_groups was hit), stats.
        stats['init_index'] (int64 [N]) gives each trajectory's initial-state index in the pool.
        """
        cfg = self.cfg
        G = int(group_size or cfg.group_size)
        B = int(num_trajectories)
        if G < 1 or B < 1 or B % G:
            raise ValueError(f"num_trajectories: expected a positive multiple of group_size={G}, got {B}")
        temperature = cfg.temperature if temperature is None else float(temperature)
        max_steps = int(max_steps or cfg.max_steps)
        need_groups = B // G
        max_groups = int(max_groups or max(need_groups, math.ceil(cfg.max_groups_factor * need_groups)))
        self.check_detector(int(cfg.num_slots), "RolloutConfig.num_slots")
        self._apply_memory_plan(int(cfg.num_slots), math.ceil(max_steps / self.K))

        pool, instr_pool = self.prepare_pool(initial_frames, instructions)
        gen = generator
        if gen is None:
            gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        sampler = GroupSampler(self, pool, instr_pool, group_size=G, num_trajectories=B, temperature=temperature,
                               max_steps=max_steps, dynamic_sampling=dynamic_sampling, generator=gen, max_groups=max_groups)
        return sampler.run()

    @torch.no_grad()
    def rollout_fixed(
        self,
        initial_frames: torch.Tensor,
        instructions: list[str] | str,
        max_steps: int | None = None,
        temperature: float | None = None,
        *,
        seed: int | None = None,
        early_exit: bool = True,
        group: torch.Tensor | None = None,
        record_video: bool = False,
    ) -> tuple[TrajectoryBatch, dict[str, Any]]:
        """B = len(initial_frames) trajectories, each to success or the horizon (no refills).

        early_exit: stop when every trajectory is done (one host sync per chunk); False runs all
        ceil(max_steps / K) chunks without any host sync in the loop.
        record_video: also return every frame, stats["video"] uint8 [B, 1 + chunks * K, H, W, 3]
        (the first frame, then each generated one; frames after a trajectory's end stay zero).
        """
        cfg = self.cfg
        temperature = cfg.temperature if temperature is None else float(temperature)
        max_steps = int(max_steps or cfg.max_steps)
        T = math.ceil(max_steps / self.K)
        self._apply_memory_plan(len(initial_frames), T)
        t_wall = time.perf_counter()
        timer = PhaseTimer(cfg.profile, self.device)
        pool, instr = self.prepare_pool(initial_frames, instructions)
        B, H, W = pool.shape[:3]
        self.check_detector(B, "one row per initial frame")
        st = self.slots.get(B, T, H, W, instr.shape[1], torch.float32, video=record_video)
        host_s = 0.0
        # a seed from the global RNG when none is given, so unseeded calls differ but stay reproducible
        run_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        fork_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(run_seed)
            first_in = uint8_to_model(pool)
            if getattr(self.wm_env, "batch_size", None) != B:
                self.env_reset(first_in)
            mask = torch.ones(B, dtype=torch.bool, device=self.device)
            self.start_rows(st, mask, pool, instr, torch.arange(B, device=self.device))
            chunks = 0
            for _ in range(T):
                timer.start()
                self.runner.run(st, temperature, T, max_steps, timer)
                chunks += 1
                if early_exit:
                    th = time.perf_counter()
                    running = bool(st.active.any())  # the one host sync per chunk
                    host_s += time.perf_counter() - th
                    if not running:
                        break
        out_dev = torch.device(cfg.output_device) if cfg.output_device else self.device
        steps = st.step
        batch = TrajectoryBatch(  # copies: the slot state is reused by the next call
            obs=st.obs.to(out_dev, copy=True),
            instr=instr.to(out_dev, copy=True),
            tokens=st.tokens.to(out_dev, copy=True),
            old_logp=st.logp.to(out_dev, copy=True),
            chunk_mask=(torch.arange(T, device=self.device)[None, :] < steps[:, None]).to(out_dev),
            success=st.success.to(out_dev, copy=True),
            group=(group if group is not None else torch.arange(B)).to(out_dev, torch.int64),
            length=st.length.to(out_dev, copy=True),
        )
        timer.add("host", host_s)
        wall = time.perf_counter() - t_wall
        stats = {
            "chunks": chunks,
            "frames_computed": chunks * B * self.K,
            "frames_kept": int(st.length.sum()),
            "success_rate": float(st.success.float().mean()),
            "host_s": host_s,
            "wall_s": wall,
            "frames_per_sec": chunks * B * self.K / wall if wall > 0 else float("nan"),
            "time": dict(timer.t),
        }
        if record_video:
            stats["video"] = st.video[:, : 1 + chunks * self.K].to(out_dev, copy=True)
        return batch, stats
