"""The rows `wmpo bench` times, one (mode, model, steps, batch) each. Every row is prepared once (its
warm-up, never timed) and then measured once per round; rounds interleave all rows, so a machine that
gets busier slows every row alike, and each row reports the median and spread over its rounds.

  imagine            WorldModelEnv: world model (context KV cache, fused ops) + VAE decode of all K frames,
                     random actions in [-1, 1]; the headline "imagined frames/s"
  imagine_reference  the same world model without the context cache, every wmpo op as its plain-PyTorch
                     reference (wmpo.ops.reference_ops): the eager reference path the engine is compared with
  loop               ImaginationEngine.rollout_fixed: policy -> world model -> VAE -> reward model per chunk,
                     no host sync in the loop, `chunks` chunks per measurement
  grpo               ImaginationEngine.sample_groups: GRPO group sampling with continuous batching, every
                     trajectory to success (a trained reward model) or the horizon
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from wmpo.bench.measure import count_flops, sync

Progress = Callable[[str], None]


class CostOnlyDetector:
    """A random-weight reward model evaluated on every new frame (its cost is measured) whose verdict is not
    used: no trajectory ends early, so GRPO sampling runs every trajectory to the horizon. Used when no trained
    reward model exists (presets, --model); a random model's verdicts would end trajectories at random."""

    def __init__(self, detector: Any):
        self.inner = detector
        self.model = getattr(detector, "model", None)
        self.batch_size = detector.batch_size
        self.device = detector.device

    def reset_slots(self, mask: torch.Tensor, first_frames: torch.Tensor) -> None:
        self.inner.reset_slots(mask, first_frames)

    def update(self, new_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        success, first = self.inner.update(new_frames)
        return torch.zeros_like(success), torch.full_like(first, -1)


class Row:
    """Base: `describe()` (the JSON keys that name it), `prepare()` (warm-up), `measure()` -> frames/s."""

    mode = ""

    def __init__(self, model: str, steps: int, batch: int):
        self.model, self.steps, self.batch = model, steps, batch
        self.samples: list[float] = []
        self.extra: dict[str, Any] = {}
        self.flops_per_frame: float | None = None
        self.error: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.model, "steps": self.steps, "batch": self.batch}

    def label(self) -> str:
        return f"{self.mode:<17} {self.model:<8} steps={self.steps:<3} batch={self.batch}"


def _env(subj: Any, wm: Any, steps: int, device: torch.device, use_cache: bool = True, seed: int = 0):
    from wmpo.rollout.world_model_env import WorldModelEnv

    return WorldModelEnv(subj.vae, wm, steps=steps, device=device, use_cache=use_cache,
                         generator=torch.Generator(device=device).manual_seed(seed))


def _first_frames(subj: Any, batch: int, device: torch.device) -> torch.Tensor:
    from wmpo.utils.frames import uint8_to_model

    pool = subj.initial_frames
    return uint8_to_model(pool[torch.arange(batch) % pool.shape[0]].to(device))


class ImagineRow(Row):
    """WorldModelEnv frames/s (see the module docstring); reference=True: imagine_reference."""

    def __init__(self, subj: Any, model: str, steps: int, batch: int, *, chunks: int, warmup: int, device: torch.device,
                 autocast: Any, reference: bool = False, seed: int = 0):
        super().__init__(model, steps, batch)
        self.mode = "imagine_reference" if reference else "imagine"
        self.subj, self.wm, self.device, self.autocast = subj, subj.world_models[model], device, autocast
        self.chunks, self.warmup, self.reference = chunks, warmup, reference
        self.env = _env(subj, self.wm, steps, device, use_cache=not reference, seed=seed)
        self.first = _first_frames(subj, batch, device)
        g = torch.Generator().manual_seed(seed + 1)
        K, A = self.env.K, self.env.A
        self.actions = [(torch.rand(batch, K, A, generator=g) * 2 - 1).to(device) for _ in range(max(chunks, warmup, 1))]
        self.t_wm = self.t_vae = 0.0

    def _ctx(self):
        from wmpo import ops

        stack = contextlib.ExitStack()
        stack.enter_context(self.autocast())
        if self.reference:
            stack.enter_context(ops.reference_ops())
        return stack

    def prepare(self) -> None:
        with self._ctx():
            self.env.reset(self.first)
            for a in self.actions[: self.warmup]:
                self.env.step(a)
            try:  # FLOPs of one chunk at batch 1 (every part is linear in the batch)
                one = _env(self.subj, self.wm, self.steps, self.device, use_cache=not self.reference)
                one.reset(self.first[:1])
                self.flops_per_frame = count_flops(lambda: one.step(self.actions[0][:1])) / one.K
            except Exception as e:  # noqa: BLE001 - a user's model the counter cannot trace: no MFU, say why
                self.extra["flops_note"] = f"not counted: {type(e).__name__}: {e}"
        sync(self.device)

    def measure(self) -> float:
        with self._ctx():
            self.env.reset(self.first)
            sync(self.device)
            t_wm = t_vae = 0.0
            t0 = time.perf_counter()
            for a in self.actions[: self.chunks]:
                ta = time.perf_counter()
                lat = self.env.step(a, decode=False)
                sync(self.device)
                tb = time.perf_counter()
                self.env.decode(lat)
                sync(self.device)
                t_wm += tb - ta
                t_vae += time.perf_counter() - tb
            wall = time.perf_counter() - t0
        self.t_wm += t_wm
        self.t_vae += t_vae
        self.extra.setdefault("seconds_per_chunk", []).append(wall / self.chunks)
        return self.batch * self.env.K * self.chunks / wall

    def finish(self) -> None:
        tot = self.t_wm + self.t_vae
        if tot > 0:
            self.extra["time_split"] = {"world_model": self.t_wm / tot, "vae_decode": self.t_vae / tot}
        self.extra["fused_few_step_path"] = bool(self.env.fused and len(self.env.sampler) <= self.env.fused_max_steps
                                                 and self.env.use_cache)


def _engine(subj: Any, wm: Any, steps: int, batch: int, device: torch.device, *, dtype: str, profile: bool = False,
            group_size: int | None = None, cost_only: bool = False):
    from wmpo.models.reward import IncrementalSuccess
    from wmpo.rollout.engine import ImaginationEngine, RolloutConfig

    det = IncrementalSuccess(subj.reward, batch, device)
    if cost_only:
        det = CostOnlyDetector(det)
    cfg = RolloutConfig(num_slots=batch, profile=profile, inference_dtype=dtype, bf16_weights=False, memory_plan=False,
                        group_size=group_size or 8)
    return ImaginationEngine(_env(subj, wm, steps, device), subj.policy, det, subj.tokenizer, cfg)


def _count_loop_flops(row: Row) -> None:
    """FLOPs per imagined frame of the whole loop (policy, world model, VAE, reward): one chunk at batch 1."""
    subj = row.subj
    try:
        one = _engine(subj, subj.world_models[row.model], row.steps, 1, row.device, dtype=row.dtype)
        frames = subj.initial_frames[:1]
        row.flops_per_frame = count_flops(lambda: one.rollout_fixed(frames, subj.instruction, one.K, subj.temperature,
                                                                    seed=0, early_exit=False)) / one.K
    except Exception as e:  # noqa: BLE001 - a user's model the counter cannot trace: no MFU, say why
        row.extra["flops_note"] = f"not counted: {type(e).__name__}: {e}"


class LoopRow(Row):
    """ImaginationEngine.rollout_fixed frames/s over `chunks` chunks (no early exit, no host sync)."""

    mode = "loop"

    def __init__(self, subj: Any, model: str, steps: int, batch: int, *, chunks: int, warmup: int, device: torch.device,
                 dtype: str, seed: int = 0):
        super().__init__(model, steps, batch)
        self.subj, self.device, self.dtype, self.chunks, self.warmup, self.seed = subj, device, dtype, chunks, warmup, seed
        self.engine = _engine(subj, subj.world_models[model], steps, batch, device, dtype=dtype)
        self.frames = subj.initial_frames[torch.arange(batch) % subj.initial_frames.shape[0]]

    def _run(self, engine: Any, frames: torch.Tensor, chunks: int):
        return engine.rollout_fixed(frames, self.subj.instruction, chunks * engine.K, self.subj.temperature, seed=self.seed,
                                    early_exit=False)

    def prepare(self) -> None:
        if self.warmup:
            self._run(self.engine, self.frames, self.warmup)
        _count_loop_flops(self)
        sync(self.device)

    def measure(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self._run(self.engine, self.frames, self.chunks)
        sync(self.device)
        return self.batch * self.engine.K * self.chunks / (time.perf_counter() - t0)

    def finish(self) -> None:
        """The time split of one profiled call (synchronizes around each phase)."""
        prof = _engine(self.subj, self.subj.world_models[self.model], self.steps, self.batch, self.device,
                       dtype=self.dtype, profile=True)
        self._run(prof, self.frames, 1)
        _, st = self._run(prof, self.frames, self.chunks)
        tot = sum(st["time"].values())
        self.extra["time_split"] = {k: v / tot for k, v in st["time"].items()} if tot > 0 else {}


class GRPORow(Row):
    """ImaginationEngine.sample_groups: `batch` trajectories in groups, to success or the horizon, per round."""

    mode = "grpo"

    def __init__(self, subj: Any, model: str, steps: int, batch: int, *, horizon_steps: int, horizon_note: str,
                 device: torch.device, dtype: str, seed: int = 0):
        G = max(1, min(subj.group_size, batch))
        batch = batch - batch % G
        super().__init__(model, steps, batch)
        self.subj, self.device, self.seed, self.G, self.dtype = subj, device, seed, G, dtype
        self.horizon_steps = horizon_steps
        self.engine = _engine(subj, subj.world_models[model], steps, batch, device, dtype=dtype, group_size=G,
                              cost_only=not subj.reward_trained)
        self.extra.update({
            "group_size": G, "horizon_steps": horizon_steps, "horizon_note": horizon_note,
            "dynamic_sampling": False,
            "reward_model": ("trained (the run's): its verdicts end trajectories at success" if subj.reward_trained else
                             "random weights, evaluated on every frame but its verdict not used, so every trajectory "
                             "runs to the horizon (no trained reward model here: use --checkpoint RUN_DIR)"),
            "initial_frames": subj.frames_note,
        })
        self.rounds: list[dict[str, Any]] = []

    def _run(self):
        return self.engine.sample_groups(self.subj.initial_frames, self.subj.instruction, group_size=self.G,
                                         num_trajectories=self.batch, temperature=self.subj.temperature,
                                         max_steps=self.horizon_steps, dynamic_sampling=False, seed=self.seed)

    def prepare(self) -> None:
        """FLOPs only: a GRPO call runs to the horizon, too long to spend on a warm-up (the loop rows of the same
        models warm them; without loop rows the first round includes the allocator's first use)."""
        _count_loop_flops(self)

    def measure(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        batch, st = self._run()
        sync(self.device)
        wall = time.perf_counter() - t0
        n = len(batch)
        length = batch.length.float() if n else torch.zeros(0)
        self.rounds.append({
            "wall_s": wall, "trajectories": n, "trajectories_per_hour": n / wall * 3600, "chunks": st["chunks"],
            "success_rate": float(batch.success.float().mean()) if n else None,
            "mean_length": float(length.mean()) if n else None,
            "at_horizon_fraction": float((length >= self.horizon_steps).float().mean()) if n else None,
            "slot_utilization": st["slot_utilization"], "host_frac": st["host_s"] / wall,
            "frames_active": st["frames_active"], "frames_kept": st["frames_kept"],
        })
        return st["frames_active"] / wall

    def finish(self) -> None:
        import statistics

        self.extra["rounds"] = self.rounds
        if self.rounds:
            self.extra["trajectories_per_hour_median"] = statistics.median(r["trajectories_per_hour"] for r in self.rounds)
            self.extra["at_horizon_fraction"] = self.rounds[-1]["at_horizon_fraction"]
            self.extra["success_rate"] = self.rounds[-1]["success_rate"]
