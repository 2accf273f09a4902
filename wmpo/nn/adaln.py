"""LayerNorm + per-frame modulation modules (fused): AdaLNModulate (norm, then modulate) and
GatedResidualAdaLN (gated residual add, then norm and modulate), with nn.LayerNorm's parameters."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from wmpo import ops


class _LayerNormParams(nn.Module):
    """eps and the optional affine weight/bias of an nn.LayerNorm over the last dim, same names."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, elementwise_affine: bool = False, bias: bool = True,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        self.hidden_size, self.eps, self.backend = int(hidden_size), float(eps), backend
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(hidden_size, **kw)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(hidden_size, **kw)) if elementwise_affine and bias else None

    @classmethod
    def from_layernorm(cls, norm: nn.LayerNorm, backend: Optional[str] = None):
        """A module sharing `norm`'s eps and (if any) its weight/bias Parameters (no copy)."""
        if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
            raise ValueError(f"norm: expected an nn.LayerNorm over the last dim, got {norm!r}")
        m = cls(norm.normalized_shape[0], eps=norm.eps, elementwise_affine=False, backend=backend)
        m.weight, m.bias = norm.weight, norm.bias
        return m

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class AdaLNModulate(_LayerNormParams):
    """y = LayerNorm(x) * (1 + scale) + shift, per frame: replaces ``modulate(norm(x), shift, scale)``
    (DiT, diffusers AdaLayerNormZero, Open-Sora t2i_modulate(norm1(x), ...)). forward(x, shift, scale)."""

    def forward(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return ops.adaln_modulate(x, shift, scale, weight=self.weight, bias=self.bias, eps=self.eps,
                                  backend=self.backend)


class GatedResidualAdaLN(_LayerNormParams):
    """(out, h): out = residual + gate * y; h = LayerNorm(out) * (1 + scale) + shift, per frame: the
    join between two sub-blocks of an adaLN-Zero block. forward(residual, y, gate, shift, scale)."""

    def forward(self, residual: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        return ops.gated_residual_adaln(residual, y, gate, shift, scale, weight=self.weight, bias=self.bias,
                                        eps=self.eps, backend=self.backend)
