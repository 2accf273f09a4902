"""Norm-free modulation modules: Modulate (x * (1 + scale) + shift) and GatedResidual
(residual + gate * y), per frame, in the layouts of wmpo.ops.layout."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from wmpo import ops


class Modulate(nn.Module):
    """y = x * (1 + scale) + shift per frame (Open-Sora ``t2i_modulate`` on an already-normed x)."""

    def __init__(self, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return ops.modulate(x, shift, scale, backend=self.backend)


class GatedResidual(nn.Module):
    """out = residual + gate * y per frame (``x + gate_msa * attn(x)`` of adaLN-Zero blocks)."""

    def __init__(self, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, residual: Tensor, y: Tensor, gate: Tensor) -> Tensor:
        return ops.gated_residual(residual, y, gate, backend=self.backend)
