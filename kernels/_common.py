"""Launch-size helpers shared by the Triton launchers, and the flat-index helper of the elementwise kernels."""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl


def interpreting(device) -> bool:
    """True when kernels run in the Triton CPU interpreter (TRITON_INTERPRET=1 or CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1" or getattr(device, "type", str(device)) == "cpu"


def rows_per_program(R: int, block_d: int, device) -> int:
    """Rows per program: a few rows on a GPU, big blocks (few programs) in the interpreter."""
    if interpreting(device):
        want = triton.next_power_of_2(max(1, triton.cdiv(R, 4)))
        return max(1, min(want, (1 << 20) // block_d))
    return max(1, min(16, 4096 // block_d))


def flat_block(n: int, device) -> int:
    """Elements per program for flat elementwise kernels."""
    if interpreting(device):
        return max(16, min(triton.next_power_of_2(max(1, triton.cdiv(n, 4))), 1 << 20))
    return 2048


def on_device(t: torch.Tensor):
    """Context in which a launch goes to `t`'s GPU (Triton launches on the current device), or a no-op."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@triton.jit
def flat_offsets(BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """The element offsets of this program of a flat elementwise kernel: 64-bit index math (and its
    divisions) only for tensors past 2^31 elements (IDX64)."""
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)
