"""GRPO group sampling with continuous batching and dynamic sampling (one `sample_groups` call).

`num_slots` slots; trajectory j belongs to group j // G; a slot whose trajectory finished takes the
next trajectory at the end of its chunk (world-model env and detector `reset_slots`); when all G
trajectories of a group are finished the group is kept or dropped (dynamic sampling, the mixed-group
test of wmpo.data.groups) at once; the loop stops when B trajectories of kept groups exist.

Host syncs: exactly one per chunk (`wmpo.rollout.slots.sync`, a named SyncRecord); it decides which
slots are refilled and which finished trajectories are copied out. Everything else (copy-out
gathers, slot resets) is queued on the device.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from wmpo.data.batch import TrajectoryBatch
from wmpo.data.groups import group_ids, is_mixed
from wmpo.rollout.chunk import PhaseTimer
from wmpo.rollout.slots import SlotState, SyncRecord, sync
from wmpo.utils.frames import uint8_to_model


class GroupSampler:
    """The host-side bookkeeping of one sample_groups call over an engine's slots."""

    def __init__(self, engine: Any, pool: torch.Tensor, instr_pool: torch.Tensor, *, group_size: int, num_trajectories: int,
                 temperature: float, max_steps: int, dynamic_sampling: bool, generator: torch.Generator, max_groups: int):
        self.eng = engine
        self.pool, self.instr_pool = pool, instr_pool
        self.G, self.temperature, self.max_steps = group_size, temperature, max_steps
        self.dynamic_sampling = dynamic_sampling
        self.T = math.ceil(max_steps / engine.K)
        self.need_groups = num_trajectories // group_size
        self.max_groups = max_groups
        self.S = int(engine.cfg.num_slots)
        I = pool.shape[0]
        # initial state of each group: cycles of random permutations of the pool
        n_cycles = math.ceil(max_groups / I)
        self.group_init = torch.cat([torch.randperm(I, generator=generator) for _ in range(n_cycles)])[:max_groups]
        self.group_init_dev = self.group_init.to(engine.device)
        self.policy_seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        cfg = engine.cfg
        self.out_dev = torch.device(cfg.output_device) if cfg.output_device else engine.device
        self.n_traj_total = max_groups * group_size
        self.traj_group = np.arange(self.n_traj_total) // group_size
        self.group_done = np.zeros(max_groups, dtype=np.int64)
        self.group_succ = np.zeros(max_groups, dtype=np.int64)
        self.group_dropped = np.zeros(max_groups, dtype=bool)
        self.kept_groups: list[int] = []
        self.finished: list[dict[str, torch.Tensor]] = []  # per chunk blocks of finished trajectories
        self.stored_dropped = 0  # finished trajectories of dropped groups still held in `finished`
        self.dropped = 0
        self.next_traj = 0

    # ------------------------------------------------------------------ slots
    def _launch(self, st: SlotState, mask_np: np.ndarray) -> None:
        """Start the next trajectories in the slots where mask_np (host bool [S])."""
        n_new = int(mask_np.sum())
        if n_new == 0:
            return
        ids = np.full(self.S, -1, dtype=np.int64)
        ids[mask_np] = np.arange(self.next_traj, self.next_traj + n_new)
        self.next_traj += n_new
        ids_dev = torch.from_numpy(ids).to(self.eng.device, non_blocking=True)
        mask = ids_dev >= 0
        init = self.group_init_dev[(ids_dev.clamp(min=0) // self.G)]
        rows = torch.from_numpy(np.nonzero(mask_np)[0].astype(np.int64)).to(self.eng.device, non_blocking=True)
        self.eng.start_rows(st, mask, self.pool[init], self.instr_pool[init], ids_dev, rows=rows)

    def _copy_out(self, st: SlotState, rec: SyncRecord) -> None:
        """Copy finished trajectories out of their slots and judge the groups they complete."""
        idx = torch.from_numpy(np.nonzero(rec.done)[0]).to(self.eng.device)
        ids = rec.traj[rec.done]
        succ = rec.success[rec.done]
        out = self.out_dev
        self.finished.append({
            "traj": torch.from_numpy(ids),
            "obs": st.obs.index_select(0, idx).to(out),
            "tokens": st.tokens.index_select(0, idx).to(out),
            "logp": st.logp.index_select(0, idx).to(out),
            "steps": st.step.index_select(0, idx).to(out),
            "success": torch.from_numpy(succ),
            "length": torch.from_numpy(rec.length[rec.done].copy()),
        })
        g_ids = self.traj_group[ids]
        np.add.at(self.group_done, g_ids, 1)
        np.add.at(self.group_succ, g_ids, succ.astype(np.int64))
        for g in np.unique(g_ids[self.group_done[g_ids] == self.G]):  # per finished group, not per trajectory
            if is_mixed(self.group_succ[g], self.G) or not self.dynamic_sampling:
                self.kept_groups.append(int(g))
            else:
                self.dropped += 1
                self.group_dropped[g] = True
                self.stored_dropped += self.G
        if self.stored_dropped > self.S:  # free the records of dropped groups (amortized compaction)
            self.finished = [_compact(self.finished, ~self.group_dropped[self.traj_group])]
            self.stored_dropped = 0

    def _refill(self, st: SlotState, rec: SyncRecord) -> bool:
        """Give free slots new trajectories (while any are left); -> whether anything still runs."""
        free = rec.done | ~rec.busy
        refill = free.copy()
        can = self.n_traj_total - self.next_traj
        if refill.sum() > can:
            refill[np.nonzero(refill)[0][can:]] = False
        idle = free & ~refill & rec.busy  # the slots we cannot refill
        if idle.any():
            st.traj.masked_fill_(torch.from_numpy(idle).to(self.eng.device), -1)
        self._launch(st, refill)
        return bool(refill.any() or (~free).any())

    # ------------------------------------------------------------------ the loop
    def run(self) -> tuple[TrajectoryBatch, dict[str, Any]]:
        eng, S, G, T = self.eng, self.S, self.G, self.T
        t_wall = time.perf_counter()
        timer = PhaseTimer(eng.cfg.profile, eng.device)
        host_s = 0.0
        H, W = self.pool.shape[1], self.pool.shape[2]
        frame_dtype = torch.float32
        st = eng.slots.get(S, T, H, W, self.instr_pool.shape[1], frame_dtype)
        chunks = frames_active = frames_computed = slot_busy = 0
        fork_devices = [eng.device] if eng.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(self.policy_seed)
            th = time.perf_counter()
            # first fill: reset every slot (the env's reset covers all rows)
            mask_np = np.zeros(S, dtype=bool)
            mask_np[: min(S, self.n_traj_total)] = True
            if getattr(eng.wm_env, "batch_size", None) != S:
                eng.env_reset(uint8_to_model(self.pool[self.group_init_dev[0:1].expand(S)], dtype=frame_dtype))
            self._launch(st, mask_np)  # resets the launched rows of the env and the detector
            host_s += time.perf_counter() - th
            while True:
                timer.start()
                eng.runner.run(st, self.temperature, T, self.max_steps, timer)
                chunks += 1
                th = time.perf_counter()
                rec = sync(st)  # the one host sync per chunk
                busy_now = int(rec.busy.sum())  # slots holding a trajectory during this chunk
                frames_computed += S * eng.K
                if rec.done.any():
                    self._copy_out(st, rec)
                # frames generated for slots that held a trajectory in this chunk
                frames_active += busy_now * eng.K
                slot_busy += busy_now
                if len(self.kept_groups) >= self.need_groups:
                    host_s += time.perf_counter() - th
                    break
                running = self._refill(st, rec)
                host_s += time.perf_counter() - th
                if not running:
                    break  # max_groups exhausted and nothing running
        timer.add("host", host_s)
        kept = self.kept_groups[: self.need_groups]
        batch, init_index = self._assemble(kept)
        wall = time.perf_counter() - t_wall
        stats = {
            "chunks": chunks,
            "groups_tried": int((self.group_done == G).sum()),
            "groups_launched": math.ceil(self.next_traj / G),
            "groups_kept": len(kept),
            "groups_dropped": self.dropped,
            "hit_max_groups": len(self.kept_groups) < self.need_groups,
            "trajectories_finished": int(self.group_done.sum()),
            "trajectories_succeeded": int(self.group_succ.sum()),  # over every finished trajectory, kept or dropped
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

    def _assemble(self, kept_groups: list[int]) -> tuple[TrajectoryBatch, torch.Tensor]:
        """The kept groups' trajectories, ordered by kept group, then by trajectory id within it."""
        G, T, K, D, out_dev = self.G, self.T, self.eng.K, self.eng.D, self.out_dev
        finished, instr_pool = self.finished, self.instr_pool
        H, W = (finished[0]["obs"].shape[2:4]) if finished else (0, 0)
        if not kept_groups:
            empty = TrajectoryBatch(
                obs=torch.zeros(0, T, H, W, 3, dtype=torch.uint8, device=out_dev),
                instr=instr_pool[:0].to(out_dev),
                tokens=torch.zeros(0, T, K, D, dtype=torch.int64, device=out_dev),
                old_logp=torch.zeros(0, T, K, D, device=out_dev),
                chunk_mask=torch.zeros(0, T, dtype=torch.bool, device=out_dev),
                success=torch.zeros(0, dtype=torch.bool, device=out_dev),
                group=torch.zeros(0, dtype=torch.int64, device=out_dev),
                length=torch.zeros(0, dtype=torch.int64, device=out_dev),
            )
            return empty, torch.zeros(0, dtype=torch.int64)
        cat = {k: torch.cat([f[k] for f in finished]) for k in finished[0]}
        traj = cat["traj"].numpy()
        pos = np.full(traj.max() + 1, -1, dtype=np.int64)
        pos[traj] = np.arange(len(traj))
        kg = np.asarray(kept_groups, dtype=np.int64)
        want = (kg[:, None] * G + np.arange(G)[None, :]).reshape(-1)
        rows = torch.from_numpy(pos[want])
        rows_dev = rows.to(out_dev)
        steps = cat["steps"].index_select(0, rows_dev)
        init = self.group_init[torch.from_numpy(kg)].repeat_interleave(G)
        batch = TrajectoryBatch(
            obs=cat["obs"].index_select(0, rows_dev),
            instr=instr_pool[init.to(instr_pool.device)].to(out_dev),
            tokens=cat["tokens"].index_select(0, rows_dev),
            old_logp=cat["logp"].index_select(0, rows_dev),
            chunk_mask=torch.arange(T, device=out_dev)[None, :] < steps[:, None],
            success=cat["success"][rows].to(out_dev),
            group=group_ids(len(kg), G, device=out_dev),
            length=cat["length"][rows].to(out_dev),
        )
        return batch, init


def _compact(finished: list[dict[str, torch.Tensor]], keep_traj: np.ndarray) -> dict[str, torch.Tensor]:
    """Concatenate finished-trajectory blocks, keeping rows whose trajectory id has keep_traj True."""
    cat = {k: torch.cat([f[k] for f in finished]) for k in finished[0]}
    rows = torch.from_numpy(np.nonzero(keep_traj[cat["traj"].numpy()])[0])
    return {k: v.index_select(0, rows.to(v.device)) for k, v in cat.items()}
