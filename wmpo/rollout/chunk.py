"""One chunk of imagination for every slot, and how it is run: eager, torch.compile, or replayed
from a captured CUDA graph.

Per chunk (all on the device, static shapes, no host sync):
  policy(current frame, instruction) -> action tokens, log-probs  (recorded into slot buffers)
  tokens -> the world model's normalized actions [S, K, D] (wmpo.rollout.action_map)
  world-model env step (K frames, decoded) -> success detector update on the K new frames
  last frame -> uint8 -> next policy input (the policy reads exactly the uint8 frame it records)
  device bookkeeping: per-slot step counters, done = success | horizon
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from wmpo.rollout.action_map import world_model_action_map
from wmpo.rollout.slots import SlotState
from wmpo.utils.frames import model_to_uint8
from wmpo.utils.logging import warn_once


class PhaseTimer:
    """Per-phase wall time (world_model / vae / policy / reward / bookkeeping / host), synchronizing
    the device around each phase; a disabled timer does nothing (and costs nothing)."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.device = device
        self.t: dict[str, float] = {}
        self._last = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        if self.enabled:
            self._sync()
            self._last = time.perf_counter()

    def lap(self, key: str) -> None:
        if self.enabled:
            self._sync()
            now = time.perf_counter()
            self.t[key] = self.t.get(key, 0.0) + now - self._last
            self._last = now

    def add(self, key: str, seconds: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + seconds


class ChunkRunner:
    """Runs `chunk` on a slot state per the rollout config (eager / compiled / CUDA graph)."""

    def __init__(self, wm_env: Any, policy: Any, success_detector: Any, tokenizer: Any, cfg: Any, device: torch.device,
                 compile_denoiser: Callable[[], None] | None = None):
        """compile_denoiser: called before a compiled chunk runs (the engine compiles the world model's
        denoiser step once, not the chunk)."""
        self.wm_env, self.policy, self.detector, self.tokenizer = wm_env, policy, success_detector, tokenizer
        self.cfg = cfg
        self.device = device
        self.compile_denoiser = compile_denoiser
        # tokens -> the world model's normalized actions (tokenizer and world-model stats may differ)
        self.to_wm_actions = world_model_action_map(tokenizer, wm_env, int(policy.chunk_len), int(policy.action_dim))
        self.K = int(policy.chunk_len)
        self._fn = None  # compiled / graph-captured chunk, keyed by state identity
        self._key = None
        self._graph = None
        self._warm = 0
        self._graph_failed = False

    @property
    def graph_captured(self) -> bool:
        """True once the chunk runs as a replayed CUDA graph (cfg.cuda_graph, after graph_warmup chunks)."""
        return self._graph is not None

    @property
    def graph_failed(self) -> bool:
        """True when CUDA-graph capture failed and the chunk runs eager (warned once)."""
        return self._graph_failed

    def invalidate(self) -> None:
        """Forget the compiled / captured chunk (after the env reallocated its buffers)."""
        self._graph, self._fn, self._key = None, None, None

    # ------------------------------------------------------------------ the chunk
    def chunk(self, st: SlotState, temperature: float, max_chunks: int, max_steps: int, timer: PhaseTimer) -> None:
        """One chunk for all slots, in place on `st`. Device ops only: capturable as a CUDA graph."""
        with self._autocast():
            self._chunk_ops(st, temperature, max_chunks, max_steps, timer)

    def _autocast(self):
        """bf16 autocast for the chunk on CUDA (cfg.inference_dtype), else a no-op context."""
        on = self.device.type == "cuda" and self.cfg.inference_dtype == "bf16"
        # no autocast weight-cast cache: a captured CUDA graph must not point at cached casts freed on exit
        return (torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False) if on
                else contextlib.nullcontext())

    def _chunk_ops(self, st: SlotState, temperature: float, max_chunks: int, max_steps: int, timer: PhaseTimer) -> None:
        S = st.num_slots
        ar = torch.arange(S, device=self.device)
        tokens, logp = self.policy.sample(st.cur_in, st.instr, temperature)
        actions = self.to_wm_actions(tokens).to(st.cur_in.dtype if st.cur_in.is_floating_point() else torch.float32)
        timer.lap("policy")
        # record what the policy read and did; finished / idle slots keep their rows (zero padding)
        s_idx = st.step.clamp(max=max_chunks - 1)
        act = st.active
        st.obs[ar, s_idx] = torch.where(act.view(-1, 1, 1, 1), st.cur_u8, st.obs[ar, s_idx])
        st.tokens[ar, s_idx] = torch.where(act.view(-1, 1, 1), tokens, st.tokens[ar, s_idx])
        st.logp[ar, s_idx] = torch.where(act.view(-1, 1, 1), logp.float(), st.logp[ar, s_idx])
        if self.detector is not None or st.video is not None:
            if timer.enabled:
                lat = self.wm_env.step(actions, decode=False)
                timer.lap("world_model")
                frames = self.wm_env.decode(lat)
                timer.lap("vae")
            else:
                frames = self.wm_env.step(actions, decode=True)  # [S, K, 3, H, W]
            if st.video is not None:
                self._record_video(st, frames)
            if self.detector is not None:
                success, first = self.detector.update(frames)
            else:
                success = torch.zeros(S, dtype=torch.bool, device=self.device)
                first = torch.full((S,), -1, dtype=torch.int64, device=self.device)
            last = frames[:, -1]
            timer.lap("reward")
        else:
            lat = self.wm_env.step(actions, decode=False)
            timer.lap("world_model")
            last = self.wm_env.decode(lat[:, -1:])[:, 0]
            timer.lap("vae")
            success = torch.zeros(S, dtype=torch.bool, device=self.device)
            first = torch.full((S,), -1, dtype=torch.int64, device=self.device)
        prev_steps = st.step * self.K
        st.step.add_(st.active.to(torch.int64))
        # first_success_frame counts frames of the current chunk (0..K-1) unless it is >= K
        # (then it already counts from the trajectory's start, as IncrementalSuccess reports it)
        first = first.to(torch.int64)
        first_global = torch.where(first >= self.K, first, prev_steps + first)
        # a success after the horizon (max_steps not a multiple of K) does not count
        succ_now = st.active & success.to(torch.bool) & ~st.success & (first_global < max_steps)
        horizon = st.active & (st.step >= max_chunks)
        new_len = torch.where(succ_now, first_global + 1, torch.clamp(st.step * self.K, max=max_steps))
        st.length.copy_(torch.where(st.active, new_len, st.length))
        st.success.logical_or_(succ_now)
        st.done.copy_(st.active & (succ_now | horizon))
        st.active.logical_and_(~st.done)
        st.set_current_frame(model_to_uint8(last))
        timer.lap("bookkeeping")  # bookkeeping + policy preprocessing: small device ops

    def _record_video(self, st: SlotState, frames: torch.Tensor) -> None:
        """Write the K new frames of active slots at video positions step*K + 1 .. step*K + K."""
        S, K = st.num_slots, self.K
        pos = (st.step * K + 1).clamp(max=st.video.shape[1] - K).view(S, 1) + torch.arange(K, device=self.device).view(1, K)
        rows = torch.arange(S, device=self.device).view(S, 1).expand(S, K)
        u8 = model_to_uint8(frames)  # [S, K, H, W, 3]
        st.video[rows, pos] = torch.where(st.active.view(S, 1, 1, 1, 1), u8, st.video[rows, pos])

    # ------------------------------------------------------------------ how it runs
    def run(self, st: SlotState, temperature: float, max_chunks: int, max_steps: int, timer: PhaseTimer) -> None:
        """The chunk, eager or through torch.compile / a CUDA graph per the config."""
        cfg = self.cfg
        cuda = self.device.type == "cuda"
        use_graph = cfg.cuda_graph and cuda and not timer.enabled and not self._graph_failed
        use_compile = cfg.compile_chunk and (cuda or cfg.compile_on_cpu) and not timer.enabled
        if use_compile and self.compile_denoiser is not None:
            self.compile_denoiser()  # the denoiser step is compiled, not the chunk
        if not use_graph:
            self.chunk(st, temperature, max_chunks, max_steps, timer)
            return
        key = (id(st), float(temperature), max_chunks, max_steps)
        if self._key != key:
            self._key, self._fn, self._graph = key, None, None
            self._warm = 0
        if self._fn is None:
            self._fn = lambda: self.chunk(st, temperature, max_chunks, max_steps, PhaseTimer(False, self.device))  # noqa: E731
        if self._graph is None and self._warm < cfg.graph_warmup:
            self._warm += 1
            self._fn()
            return
        if self._graph is None:
            try:
                self._graph = self._capture(self._fn)
            except Exception as e:  # pragma: no cover - CUDA only
                warn_once("rollout-graph", f"wmpo.rollout: CUDA-graph capture of the chunk failed ({e}); running eager")
                self._graph_failed = True
                self._fn()
                return
        self._graph()

    def _capture(self, fn):  # pragma: no cover - CUDA only
        """Capture `fn` (which mutates static state in place) -> a replay callable.

        Capturing does not run the work: the caller replays once for the current chunk.
        """
        from wmpo.accel.compiled import CUDAGraphRunner

        # zero-argument in-place callable: no warm-up inside (done by run), capture runs no work
        return CUDAGraphRunner(fn, device=self.device, warmup=0)
