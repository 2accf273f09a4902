"""Module drop-ins for other people's DiT / STDiT blocks, over the fused ops of wmpo.ops.

Each module takes the layouts of the ecosystem (x [*B, N, D] or [*B, F, S, D], modulation
[*B, F, D] or [*B, D]) and keeps nn.LayerNorm's parameter names, so a block's existing norm (and
its checkpoint) carries over: ``AdaLNModulate.from_layernorm(block.norm1)``. Recipes: docs/drop_in.md.
"""
from wmpo.nn.adaln import AdaLNModulate, GatedResidualAdaLN
from wmpo.nn.frame_mask import frame_modulation
from wmpo.nn.modulation import GatedResidual, Modulate

__all__ = ["AdaLNModulate", "GatedResidual", "GatedResidualAdaLN", "Modulate", "frame_modulation"]
