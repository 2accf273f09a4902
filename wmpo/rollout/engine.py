"""The imagination engine: the one rollout loop for GRPO, imagined evaluation and benchmarks.

Per chunk (all on the device, static shapes, no host sync):
  policy(current frame, instruction) -> action tokens, log-probs  (recorded into slot buffers)
  tokenizer.detokenize -> normalized actions [S, K, D]
  world-model env step (K frames, decoded) -> success detector update on the K new frames
  last frame -> uint8 -> next policy input (the policy reads exactly the uint8 frame it records)
  device bookkeeping: per-slot step counters, done = success | horizon

Host syncs (exactly one per chunk, in `_sync_slots`): one small int64 tensor [4, S] (done,
success, length, trajectory id) is copied to the host; it decides which slots are refilled and
which finished trajectories are copied out. `rollout_fixed(..., early_exit=False)` never syncs
inside the loop. Everything else (copy-out gathers, slot resets) is queued on the device.

Continuous batching (`sample_groups`): `num_slots` slots; trajectory j belongs to group j // G;
a slot whose trajectory finished takes the next trajectory at the end of its chunk (world-model
env and detector `reset_slots`); when all G trajectories of a group are finished the group is
kept or dropped (dynamic sampling) at once; the loop stops when B trajectories of kept groups exist.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wmpo.data.batch import TrajectoryBatch
from wmpo.utils.checks import check_tensor
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
    """torch.compile the chunk function (CUDA; on CPU it stays eager unless compile_on_cpu)"""
    compile_mode: str = "max-autotune-no-cudagraphs"
    """torch.compile mode for compile_chunk"""
    compile_on_cpu: bool = False
    """allow compile_chunk on the CPU (slow to compile; for testing)"""
    graph_warmup: int = 2
    """eager chunks run before capturing the CUDA graph"""
    profile: bool = False
    """synchronize around each phase and accumulate per-phase time (world_model / vae / policy /
    reward / host) into stats['time']; perturbs throughput, for benchmarks only"""
    output_device: str | None = None
    """where finished trajectories are stored (None: the engine's device)"""


@dataclass
class _SlotState:
    """Preallocated per-slot device state for one rollout call (static shapes)."""

    obs: torch.Tensor  # uint8 [S, T, H, W, 3]
    tokens: torch.Tensor  # int64 [S, T, K, D]
    logp: torch.Tensor  # float32 [S, T, K, D]
    cur_u8: torch.Tensor  # uint8 [S, H, W, 3] frame the policy reads next
    cur_in: torch.Tensor  # float [S, 3, H, W] same frame, model format
    instr: torch.Tensor  # int64 [S, L]
    step: torch.Tensor  # int64 [S] chunks done by the slot's trajectory
    active: torch.Tensor  # bool [S] slot holds a running trajectory
    success: torch.Tensor  # bool [S]
    length: torch.Tensor  # int64 [S] env steps (frames) of the trajectory so far / at its end
    done: torch.Tensor  # bool [S] finished in the last chunk
    traj: torch.Tensor  # int64 [S] trajectory id (-1 idle)
    extra: dict[str, Any] = field(default_factory=dict)


class _Timer:
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


def _module_device(m: Any) -> torch.device | None:
    if isinstance(m, torch.nn.Module):
        for p in m.parameters():
            return p.device
    d = getattr(m, "device", None)
    return torch.device(d) if d is not None else None


class ImaginationEngine:
    """Roll a policy out inside a world-model env, judged by an incremental success detector.

    wm_env: reset(frames), reset_slots(mask, frames), step(actions, decode) (wmpo.rollout.world_model_env).
    policy: wmpo.models.protocol.Policy. success_detector: reset_slots(mask, frames), update(frames)
    -> (success [B], first_success_frame [B]) (wmpo.models.reward.IncrementalSuccess), or None.
    tokenizer: detokenize(tokens [N, K, D]) -> normalized actions in [-1, 1].
    """

    def __init__(self, wm_env: Any, policy: Any, success_detector: Any, tokenizer: Any, cfg: RolloutConfig | None = None):
        self.wm_env = wm_env
        self.policy = policy
        self.detector = success_detector
        self.tokenizer = tokenizer
        self.cfg = cfg or RolloutConfig()
        dev = getattr(wm_env, "device", None) or _module_device(policy) or torch.device("cpu")
        self.device = torch.device(dev)
        self.K = int(policy.chunk_len)
        self.D = int(policy.action_dim)
        self._chunk_runner = None  # compiled / graph-captured chunk, keyed by state identity
        self._runner_key = None
        self._graph = None
        self._warm = 0
        self._graph_failed = False
        self._states: dict[tuple, _SlotState] = {}

    # ------------------------------------------------------------------ inputs
    def _prepare_pool(self, initial_frames: torch.Tensor, instructions: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _alloc(self, S: int, T: int, H: int, W: int, L: int, frame_dtype: torch.dtype) -> _SlotState:
        """Slot state for these shapes: allocated once, then reused (zeroed) so captured graphs stay valid."""
        key = (S, T, H, W, L, frame_dtype)
        st = self._states.get(key)
        if st is not None:
            for name in ("obs", "tokens", "logp", "cur_u8", "cur_in", "instr", "step", "length"):
                getattr(st, name).zero_()
            for name in ("active", "success", "done"):
                getattr(st, name).fill_(False)
            st.traj.fill_(-1)
            return st
        st = self._new_state(S, T, H, W, L, frame_dtype)
        self._states[key] = st
        return st

    def _new_state(self, S: int, T: int, H: int, W: int, L: int, frame_dtype: torch.dtype) -> _SlotState:
        d, K, D = self.device, self.K, self.D
        return _SlotState(
            obs=torch.zeros(S, T, H, W, 3, dtype=torch.uint8, device=d),
            tokens=torch.zeros(S, T, K, D, dtype=torch.int64, device=d),
            logp=torch.zeros(S, T, K, D, dtype=torch.float32, device=d),
            cur_u8=torch.zeros(S, H, W, 3, dtype=torch.uint8, device=d),
            cur_in=torch.zeros(S, 3, H, W, dtype=frame_dtype, device=d),
            instr=torch.zeros(S, L, dtype=torch.int64, device=d),
            step=torch.zeros(S, dtype=torch.int64, device=d),
            active=torch.zeros(S, dtype=torch.bool, device=d),
            success=torch.zeros(S, dtype=torch.bool, device=d),
            length=torch.zeros(S, dtype=torch.int64, device=d),
            done=torch.zeros(S, dtype=torch.bool, device=d),
            traj=torch.full((S,), -1, dtype=torch.int64, device=d),
        )

    # ------------------------------------------------------------------ the chunk
    def _chunk(self, st: _SlotState, temperature: float, max_chunks: int, max_steps: int, timer: _Timer) -> None:
        """One chunk for all slots, in place on `st`. Device ops only: capturable as a CUDA graph."""
        S = st.step.shape[0]
        ar = torch.arange(S, device=self.device)
        tokens, logp = self.policy.sample(st.cur_in, st.instr, temperature)
        actions = self.tokenizer.detokenize(tokens).to(st.cur_in.dtype if st.cur_in.is_floating_point() else torch.float32)
        timer.lap("policy")
        # record what the policy read and did; finished / idle slots keep their rows (zero padding)
        s_idx = st.step.clamp(max=max_chunks - 1)
        act = st.active
        st.obs[ar, s_idx] = torch.where(act.view(-1, 1, 1, 1), st.cur_u8, st.obs[ar, s_idx])
        st.tokens[ar, s_idx] = torch.where(act.view(-1, 1, 1), tokens, st.tokens[ar, s_idx])
        st.logp[ar, s_idx] = torch.where(act.view(-1, 1, 1), logp.float(), st.logp[ar, s_idx])
        if self.detector is not None:
            if timer.enabled:
                lat = self.wm_env.step(actions, decode=False)
                timer.lap("world_model")
                frames = self.wm_env.decode(lat)
                timer.lap("vae")
            else:
                frames = self.wm_env.step(actions, decode=True)  # [S, K, 3, H, W]
            success, first = self.detector.update(frames)
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
        u8 = model_to_uint8(last)
        st.cur_u8.copy_(u8)
        st.cur_in.copy_(uint8_to_model(u8, dtype=st.cur_in.dtype))
        timer.lap("bookkeeping")  # bookkeeping + policy preprocessing: small device ops

    def _run_chunk(self, st: _SlotState, temperature: float, max_chunks: int, max_steps: int, timer: _Timer) -> None:
        """The chunk, eager or through torch.compile / a CUDA graph per the config."""
        cfg = self.cfg
        cuda = self.device.type == "cuda"
        use_graph = cfg.cuda_graph and cuda and not timer.enabled and not self._graph_failed
        use_compile = cfg.compile_chunk and (cuda or cfg.compile_on_cpu) and not timer.enabled
        if not (use_graph or use_compile):
            self._chunk(st, temperature, max_chunks, max_steps, timer)
            return
        key = (id(st), float(temperature), max_chunks, max_steps)
        if self._runner_key != key:
            self._runner_key, self._chunk_runner, self._graph = key, None, None
            self._warm = 0
        if self._chunk_runner is None:
            fn = lambda: self._chunk(st, temperature, max_chunks, max_steps, _Timer(False, self.device))  # noqa: E731
            if use_compile:
                try:
                    fn = torch.compile(fn, mode=cfg.compile_mode, dynamic=False)
                except Exception as e:  # pragma: no cover - depends on the backend
                    warn_once("rollout-compile", f"wmpo.rollout: torch.compile of the chunk failed ({e}); running eager")
            self._chunk_runner = fn
        if not use_graph:
            self._chunk_runner()
            return
        if self._graph is None and self._warm < cfg.graph_warmup:
            self._warm += 1
            self._chunk_runner()
            return
        if self._graph is None:
            try:
                self._graph = self._capture(self._chunk_runner)
            except Exception as e:  # pragma: no cover - CUDA only
                warn_once("rollout-graph", f"wmpo.rollout: CUDA-graph capture of the chunk failed ({e}); running eager")
                self._graph_failed = True
                self._chunk_runner()
                return
        self._graph()

    def _capture(self, fn):  # pragma: no cover - CUDA only
        """Capture `fn` (which mutates static state in place) -> a replay callable.

        Capturing does not run the work: the caller replays once for the current chunk.
        """
        try:
            from wmpo.accel.compiled import CUDAGraphRunner  # type: ignore
        except ImportError:
            CUDAGraphRunner = None
        if CUDAGraphRunner is not None:
            # zero-argument in-place callable: no warm-up inside (done by _run_chunk), capture runs no work
            return CUDAGraphRunner(fn, device=self.device, warmup=0)
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.graph(g, stream=s):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(s)
        return g.replay

    def _check_detector(self, rows: int, what: str) -> None:
        n = getattr(self.detector, "batch_size", None)
        if self.detector is not None and n is not None and n != rows:
            raise ValueError(f"success_detector: expected batch_size {rows} ({what}), got {n}")

    def _env_reset(self, first_frames: torch.Tensor) -> None:
        """Reset every row of the env; reuse its buffers (reset_slots) when the batch size is unchanged,
        so a captured chunk stays valid; a reallocating reset drops the captured graph."""
        B = first_frames.shape[0]
        if getattr(self.wm_env, "batch_size", None) == B:
            self.wm_env.reset_slots(torch.ones(B, dtype=torch.bool, device=self.device), first_frames)
        else:
            self.wm_env.reset(first_frames)
            self._graph, self._chunk_runner, self._runner_key = None, None, None

    # ------------------------------------------------------------------ slot refills
    def _reset_rows(self, st: _SlotState, mask: torch.Tensor, first_u8: torch.Tensor, instr: torch.Tensor, traj: torch.Tensor) -> None:
        """Start new trajectories in the slots where `mask` (device bool [S]); device ops only."""
        first_in = uint8_to_model(first_u8, dtype=st.cur_in.dtype)
        self.wm_env.reset_slots(mask, first_in)
        if self.detector is not None:
            self.detector.reset_slots(mask, first_in)
        m4 = mask.view(-1, 1, 1, 1)
        st.cur_u8.copy_(torch.where(m4, first_u8, st.cur_u8))
        st.cur_in.copy_(torch.where(m4, first_in, st.cur_in))
        st.instr.copy_(torch.where(mask.view(-1, 1), instr, st.instr))
        st.traj.copy_(torch.where(mask, traj, st.traj))
        zero = torch.zeros_like(st.step)
        st.step.copy_(torch.where(mask, zero, st.step))
        st.length.copy_(torch.where(mask, zero, st.length))
        st.success.logical_and_(~mask)
        st.active.logical_or_(mask)

    def _sync_slots(self, st: _SlotState) -> np.ndarray:
        """THE host sync of a chunk: -> int64 [4, S] (done, success, length, trajectory id)."""
        packed = torch.stack([st.done.to(torch.int64), st.success.to(torch.int64), st.length, st.traj])
        return packed.cpu().numpy()

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
        T = math.ceil(max_steps / self.K)
        need_groups = B // G
        max_groups = int(max_groups or max(need_groups, math.ceil(cfg.max_groups_factor * need_groups)))
        S = int(cfg.num_slots)
        self._check_detector(S, "RolloutConfig.num_slots")

        t_wall = time.perf_counter()
        timer = _Timer(cfg.profile, self.device)
        host_s = 0.0
        pool, instr_pool = self._prepare_pool(initial_frames, instructions)
        I, H, W = pool.shape[0], pool.shape[1], pool.shape[2]
        gen = generator
        if gen is None:
            gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        # initial state of each group: cycles of random permutations of the pool
        n_cycles = math.ceil(max_groups / I)
        group_init = torch.cat([torch.randperm(I, generator=gen) for _ in range(n_cycles)])[:max_groups]
        group_init_dev = group_init.to(self.device)
        policy_seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
        frame_dtype = torch.float32

        st = self._alloc(S, T, H, W, instr_pool.shape[1], frame_dtype)
        out_dev = torch.device(cfg.output_device) if cfg.output_device else self.device
        finished: list[dict[str, torch.Tensor]] = []  # per chunk blocks of finished trajectories
        n_traj_total = max_groups * G
        traj_group = np.arange(n_traj_total) // G
        traj_success = np.zeros(n_traj_total, dtype=bool)
        group_done = np.zeros(max_groups, dtype=np.int64)
        group_succ = np.zeros(max_groups, dtype=np.int64)
        kept_groups: list[int] = []
        group_dropped = np.zeros(max_groups, dtype=bool)
        stored_dropped = 0  # finished trajectories of dropped groups still held in `finished`
        dropped = 0
        next_traj = 0
        chunks = 0
        frames_active = 0
        frames_computed = 0
        slot_busy = 0

        def launch(mask_np: np.ndarray) -> None:
            nonlocal next_traj
            n_new = int(mask_np.sum())
            if n_new == 0:
                return
            ids = np.full(S, -1, dtype=np.int64)
            ids[mask_np] = np.arange(next_traj, next_traj + n_new)
            next_traj += n_new
            ids_dev = torch.from_numpy(ids).to(self.device, non_blocking=True)
            mask = ids_dev >= 0
            init = group_init_dev[(ids_dev.clamp(min=0) // G)]
            self._reset_rows(st, mask, pool[init], instr_pool[init], ids_dev)

        fork_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(policy_seed)
            th = time.perf_counter()
            # first fill: reset every slot (the env's reset covers all rows)
            n0 = min(S, n_traj_total)
            mask_np = np.zeros(S, dtype=bool)
            mask_np[:n0] = True
            if getattr(self.wm_env, "batch_size", None) != S:
                self._env_reset(uint8_to_model(pool[group_init_dev[0:1].expand(S)], dtype=frame_dtype))
            launch(mask_np)  # resets the launched rows of the env and the detector
            host_s += time.perf_counter() - th
            while True:
                timer.start()
                self._run_chunk(st, temperature, T, max_steps, timer)
                chunks += 1
                th = time.perf_counter()
                info = self._sync_slots(st)  # the one host sync per chunk
                done_np = info[0].astype(bool)
                active_before = (info[3] >= 0)  # slots holding a trajectory during this chunk
                busy_now = int(active_before.sum())
                frames_computed += S * self.K
                if done_np.any():
                    idx = torch.from_numpy(np.nonzero(done_np)[0]).to(self.device)
                    ids = info[3][done_np]
                    succ = info[1][done_np].astype(bool)
                    finished.append(
                        {
                            "traj": torch.from_numpy(ids),
                            "obs": st.obs.index_select(0, idx).to(out_dev),
                            "tokens": st.tokens.index_select(0, idx).to(out_dev),
                            "logp": st.logp.index_select(0, idx).to(out_dev),
                            "steps": st.step.index_select(0, idx).to(out_dev),
                            "success": torch.from_numpy(succ),
                            "length": torch.from_numpy(info[2][done_np].copy()),
                        }
                    )
                    traj_success[ids] = succ
                    g_ids = traj_group[ids]
                    np.add.at(group_done, g_ids, 1)
                    np.add.at(group_succ, g_ids, succ.astype(np.int64))
                    for g in np.unique(g_ids[group_done[g_ids] == G]):  # per finished group, not per trajectory
                        mixed = 0 < group_succ[g] < G
                        if mixed or not dynamic_sampling:
                            kept_groups.append(int(g))
                        else:
                            dropped += 1
                            group_dropped[g] = True
                            stored_dropped += G
                    if stored_dropped > S:  # free the records of dropped groups (amortized compaction)
                        finished = [self._compact(finished, ~group_dropped[traj_group])]
                        stored_dropped = 0
                # frames generated for slots that held a trajectory in this chunk
                frames_active += busy_now * self.K
                slot_busy += busy_now
                if len(kept_groups) >= need_groups:
                    host_s += time.perf_counter() - th
                    break
                free = done_np | (info[3] < 0)
                refill = free.copy()
                can = n_traj_total - next_traj
                if refill.sum() > can:
                    refill[np.nonzero(refill)[0][can:]] = False
                # idle the slots we cannot refill
                idle = free & ~refill & (info[3] >= 0)
                if idle.any():
                    st.traj.masked_fill_(torch.from_numpy(idle).to(self.device), -1)
                launch(refill)
                host_s += time.perf_counter() - th
                if not (refill.any() or (~free).any()):
                    break  # max_groups exhausted and nothing running
        timer.t["host"] = timer.t.get("host", 0.0) + host_s
        batch, init_index = self._assemble(finished, kept_groups[:need_groups], G, T, instr_pool, group_init, out_dev)
        wall = time.perf_counter() - t_wall
        stats = {
            "chunks": chunks,
            "groups_tried": int((group_done == G).sum()),
            "groups_launched": math.ceil(next_traj / G),
            "groups_kept": len(kept_groups[:need_groups]),
            "groups_dropped": dropped,
            "hit_max_groups": len(kept_groups) < need_groups,
            "trajectories_finished": int(group_done.sum()),
            "frames_computed": frames_computed,
            "frames_active": frames_active,
            "slot_utilization": slot_busy / max(1, chunks * S),
            "host_s": host_s,
            "wall_s": wall,
            "frames_kept": int(batch.length.sum()) if len(batch) else 0,
            "frames_per_sec": frames_active / wall if wall > 0 else float("nan"),
            "host_syncs": chunks,
            "init_index": init_index,
            "time": dict(timer.t),
        }
        return batch, stats

    @staticmethod
    def _compact(finished: list[dict[str, torch.Tensor]], keep_traj: np.ndarray) -> dict[str, torch.Tensor]:
        """Concatenate finished-trajectory blocks, keeping rows whose trajectory id has keep_traj True."""
        cat = {k: torch.cat([f[k] for f in finished]) for k in finished[0]}
        rows = torch.from_numpy(np.nonzero(keep_traj[cat["traj"].numpy()])[0])
        return {k: v.index_select(0, rows.to(v.device)) for k, v in cat.items()}

    def _assemble(self, finished, kept_groups, G, T, instr_pool, group_init, out_dev):
        H, W = (finished[0]["obs"].shape[2:4]) if finished else (0, 0)
        if not kept_groups:
            empty = TrajectoryBatch(
                obs=torch.zeros(0, T, H, W, 3, dtype=torch.uint8, device=out_dev),
                instr=instr_pool[:0].to(out_dev),
                tokens=torch.zeros(0, T, self.K, self.D, dtype=torch.int64, device=out_dev),
                old_logp=torch.zeros(0, T, self.K, self.D, device=out_dev),
                chunk_mask=torch.zeros(0, T, dtype=torch.bool, device=out_dev),
                success=torch.zeros(0, dtype=torch.bool, device=out_dev),
                group=torch.zeros(0, dtype=torch.int64, device=out_dev),
                length=torch.zeros(0, dtype=torch.int64, device=out_dev),
            )
            return empty, torch.zeros(0, dtype=torch.int64)
        cat = {k: torch.cat([f[k] for f in finished]) for k in finished[0]}
        traj = cat["traj"].numpy()
        # rows ordered by kept group, then by trajectory id within it
        pos = np.full(traj.max() + 1, -1, dtype=np.int64)
        pos[traj] = np.arange(len(traj))
        kg = np.asarray(kept_groups, dtype=np.int64)
        want = (kg[:, None] * G + np.arange(G)[None, :]).reshape(-1)
        rows = torch.from_numpy(pos[want])
        rows_dev = rows.to(out_dev)
        steps = cat["steps"].index_select(0, rows_dev)
        init = group_init[torch.from_numpy(kg)].repeat_interleave(G)
        batch = TrajectoryBatch(
            obs=cat["obs"].index_select(0, rows_dev),
            instr=instr_pool[init.to(instr_pool.device)].to(out_dev),
            tokens=cat["tokens"].index_select(0, rows_dev),
            old_logp=cat["logp"].index_select(0, rows_dev),
            chunk_mask=torch.arange(T, device=out_dev)[None, :] < steps[:, None],
            success=cat["success"][rows].to(out_dev),
            group=torch.arange(len(kg)).repeat_interleave(G).to(out_dev),
            length=cat["length"][rows].to(out_dev),
        )
        return batch, init

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
    ) -> tuple[TrajectoryBatch, dict[str, Any]]:
        """B = len(initial_frames) trajectories, each to success or the horizon (no refills).

        early_exit: stop when every trajectory is done (one host sync per chunk); False runs all
        ceil(max_steps / K) chunks without any host sync in the loop.
        """
        cfg = self.cfg
        temperature = cfg.temperature if temperature is None else float(temperature)
        max_steps = int(max_steps or cfg.max_steps)
        T = math.ceil(max_steps / self.K)
        t_wall = time.perf_counter()
        timer = _Timer(cfg.profile, self.device)
        pool, instr = self._prepare_pool(initial_frames, instructions)
        B, H, W = pool.shape[:3]
        self._check_detector(B, "one row per initial frame")
        st = self._alloc(B, T, H, W, instr.shape[1], torch.float32)
        host_s = 0.0
        # a seed from the global RNG when none is given, so unseeded calls differ but stay reproducible
        run_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        fork_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(run_seed)
            first_in = uint8_to_model(pool)
            if getattr(self.wm_env, "batch_size", None) != B:
                self._env_reset(first_in)
            mask = torch.ones(B, dtype=torch.bool, device=self.device)
            self._reset_rows(st, mask, pool, instr, torch.arange(B, device=self.device))
            chunks = 0
            for _ in range(T):
                timer.start()
                self._run_chunk(st, temperature, T, max_steps, timer)
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
        timer.t["host"] = timer.t.get("host", 0.0) + host_s
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
        return batch, stats

    @torch.no_grad()
    def rollout_eager_reference(
        self,
        initial_frames: torch.Tensor,
        instructions: list[str] | str,
        max_steps: int | None = None,
        temperature: float | None = None,
        *,
        seed: int | None = None,
    ) -> tuple[TrajectoryBatch, dict[str, Any]]:
        """The public reference implementation's style, for benchmarks: every chunk decodes all
        frames and round-trips them through host numpy, every trajectory runs to the horizon, and
        the success detector scores the stored videos afterwards.
        """
        cfg = self.cfg
        temperature = cfg.temperature if temperature is None else float(temperature)
        max_steps = int(max_steps or cfg.max_steps)
        T = math.ceil(max_steps / self.K)
        t_wall = time.perf_counter()
        timer = _Timer(True, self.device)
        pool, instr = self._prepare_pool(initial_frames, instructions)
        B = pool.shape[0]
        self._check_detector(B, "one row per initial frame")
        videos: list[np.ndarray] = []  # host uint8 [B, K, H, W, 3] per chunk
        obs_l, tok_l, logp_l = [], [], []
        # a seed from the global RNG when none is given, so unseeded calls differ but stay reproducible
        run_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        fork_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(run_seed)
            cur = pool.cpu().numpy()
            self._env_reset(uint8_to_model(pool))
            timer.start()
            for _ in range(T):
                frames_in = uint8_to_model(torch.from_numpy(cur).to(self.device))
                timer.lap("host")
                tokens, logp = self.policy.sample(frames_in, instr, temperature)
                actions = self.tokenizer.detokenize(tokens).float()
                obs_l.append(torch.from_numpy(cur))
                tok_l.append(tokens.cpu())
                logp_l.append(logp.float().cpu())
                timer.lap("policy")
                lat = self.wm_env.step(actions, decode=False)
                timer.lap("world_model")
                frames = self.wm_env.decode(lat)
                timer.lap("vae")
                video = model_to_uint8(frames).cpu().numpy()
                videos.append(video)
                cur = video[:, -1]
                timer.lap("host")
            # score afterwards, chunk by chunk from the stored host videos
            success = torch.zeros(B, dtype=torch.bool)
            length = torch.full((B,), min(T * self.K, max_steps), dtype=torch.int64)
            if self.detector is not None:
                self.detector.reset_slots(torch.ones(B, dtype=torch.bool, device=self.device), uint8_to_model(pool))
                for s, video in enumerate(videos):
                    ok, first = self.detector.update(uint8_to_model(torch.from_numpy(video).to(self.device)))
                    ok, first = ok.cpu(), first.cpu().to(torch.int64)
                    first_g = torch.where(first >= self.K, first, s * self.K + first)
                    new = ok & ~success & (first_g < max_steps)
                    length = torch.where(new, first_g + 1, length)
                    success |= ok
                timer.lap("reward")
        wall = time.perf_counter() - t_wall
        steps = torch.where(success, (length + self.K - 1) // self.K, torch.full_like(length, T))
        batch = TrajectoryBatch(
            obs=torch.stack(obs_l, 1),
            instr=instr.cpu(),
            tokens=torch.stack(tok_l, 1),
            old_logp=torch.stack(logp_l, 1),
            chunk_mask=torch.arange(T)[None, :] < steps[:, None],
            success=success,
            group=torch.arange(B),
            length=length,
        )
        stats = {
            "chunks": T,
            "frames_computed": T * B * self.K,
            "frames_kept": int(length.sum()),
            "success_rate": float(success.float().mean()),
            "wall_s": wall,
            "frames_per_sec": T * B * self.K / wall if wall > 0 else float("nan"),
            "time": dict(timer.t),
        }
        return batch, stats
