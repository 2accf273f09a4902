"""Slot state of the imagination engine: S rows advanced together, each holding one trajectory.

All fields are preallocated device tensors with static shapes (a captured CUDA graph keeps pointing
at them); `SlotPool` allocates them once per shape and zeroes them for the next call. `sync` is the
engine's one host sync per chunk: it copies the few per-slot values the host loop needs into a
named `SyncRecord`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wmpo.utils.frames import uint8_to_model


@dataclass
class SlotState:
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
    video: torch.Tensor | None = None  # uint8 [S, T*K + 1, H, W, 3] every frame (first + generated), when recorded
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_slots(self) -> int:
        return self.step.shape[0]

    def reset_rows(self, mask: torch.Tensor, first_u8: torch.Tensor, first_in: torch.Tensor, instr: torch.Tensor,
                   traj: torch.Tensor) -> None:
        """Start new trajectories in the slots where `mask` (device bool [S]); device ops only."""
        m4 = mask.view(-1, 1, 1, 1)
        self.cur_u8.copy_(torch.where(m4, first_u8, self.cur_u8))
        if self.video is not None:
            self.video[:, 0].copy_(torch.where(m4, first_u8, self.video[:, 0]))
        self.cur_in.copy_(torch.where(m4, first_in, self.cur_in))
        self.instr.copy_(torch.where(mask.view(-1, 1), instr, self.instr))
        self.traj.copy_(torch.where(mask, traj, self.traj))
        zero = torch.zeros_like(self.step)
        self.step.copy_(torch.where(mask, zero, self.step))
        self.length.copy_(torch.where(mask, zero, self.length))
        self.success.logical_and_(~mask)
        self.active.logical_or_(mask)

    def set_current_frame(self, u8: torch.Tensor) -> None:
        """The frame the policy reads next: uint8 [S, H, W, 3] (and its model-format copy)."""
        self.cur_u8.copy_(u8)
        self.cur_in.copy_(uint8_to_model(u8, dtype=self.cur_in.dtype))


@dataclass
class SyncRecord:
    """What the host learns about the slots after a chunk (the one device -> host copy)."""

    done: np.ndarray  # bool [S] the slot's trajectory finished in this chunk
    success: np.ndarray  # bool [S]
    length: np.ndarray  # int64 [S] env steps of the trajectory (at its end when done)
    traj: np.ndarray  # int64 [S] trajectory id, -1 for an idle slot

    @property
    def busy(self) -> np.ndarray:
        """bool [S]: slots that held a trajectory during the chunk."""
        return self.traj >= 0


def sync(st: SlotState) -> SyncRecord:
    """THE host sync of a chunk: one small int64 [4, S] copy, unpacked into named fields."""
    packed = torch.stack([st.done.to(torch.int64), st.success.to(torch.int64), st.length, st.traj]).cpu().numpy()
    return SyncRecord(done=packed[0].astype(bool), success=packed[1].astype(bool), length=packed[2].copy(), traj=packed[3].copy())


class SlotPool:
    """Slot states keyed by shape, allocated once and zeroed on reuse so captured graphs stay valid."""

    def __init__(self, device: torch.device, chunk_len: int, action_dim: int):
        self.device, self.K, self.D = device, chunk_len, action_dim
        self._states: dict[tuple, SlotState] = {}

    def get(self, S: int, T: int, H: int, W: int, L: int, frame_dtype: torch.dtype, video: bool = False) -> SlotState:
        """video: also keep every generated frame per slot (SlotState.video)."""
        key = (S, T, H, W, L, frame_dtype, video)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = self._new(S, T, H, W, L, frame_dtype)
            if video:
                st.video = torch.zeros(S, T * self.K + 1, H, W, 3, dtype=torch.uint8, device=self.device)
            return st
        for name in ("obs", "tokens", "logp", "cur_u8", "cur_in", "instr", "step", "length"):
            getattr(st, name).zero_()
        if st.video is not None:
            st.video.zero_()
        for name in ("active", "success", "done"):
            getattr(st, name).fill_(False)
        st.traj.fill_(-1)
        return st

    def _new(self, S: int, T: int, H: int, W: int, L: int, frame_dtype: torch.dtype) -> SlotState:
        d, K, D = self.device, self.K, self.D
        return SlotState(
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
