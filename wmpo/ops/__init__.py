"""wmpo's fused ops: one module per op (reference ``*_ref``, checks, ``torch.library.custom_op`` with a
fake implementation, backward where training needs it, dispatch to the kernels) and one dispatcher.

Exact semantics (last dim D; the per-frame ops take x [R, D], [*B, N, D] or [*B, F, S, D] with
modulation [F, D], [*B, F, D] or [*B, D], see wmpo.ops.layout): docs/ops.md. Every public op is a custom op
(namespace ``wmpo``), so it works inside ``torch.compile(fullgraph=True)``. Backends: ``triton``
(kernels/), ``cuda`` and ``cpp`` (the compiled extension wmpo._C, ops under torch.ops.wmpo_C) and
``ref``; chosen by ``backend=``, `reference_ops()` or ``WMPO_BACKEND`` (`wmpo.ops.dispatch`).
"""
from __future__ import annotations

from wmpo.ops.action_logprob import NUM_BINS, action_logprob, action_logprob_ref
from wmpo.ops.adaln_modulate import adaln_fusable_dtypes, adaln_modulate, adaln_modulate_ref
from wmpo.ops.dispatch import (
    BACKENDS,
    BackendUnavailableError,
    HAS_EXTENSION,
    extension_has_cuda,
    reference_ops,
    resolve_backend,
    triton_usable,
)
from wmpo.ops.flow_step import flow_step, flow_step_ref
from wmpo.ops.flow_step_patchify import flow_step_patchify, flow_step_patchify_ref
from wmpo.ops.frame_causal_attention import frame_causal_attention, frame_causal_attention_ref
from wmpo.ops.gated_residual import gated_residual, gated_residual_ref
from wmpo.ops.gated_residual_adaln import gated_residual_adaln, gated_residual_adaln_ref
from wmpo.ops.layout import frame_layout
from wmpo.ops.modulate import modulate, modulate_ref
from wmpo.ops.noisy_context import noisy_context, noisy_context_ref

__all__ = [
    "BACKENDS", "BackendUnavailableError", "frame_layout", "gated_residual", "gated_residual_ref", "modulate",
    "modulate_ref", "HAS_EXTENSION", "NUM_BINS", "action_logprob", "action_logprob_ref", "adaln_fusable_dtypes", "adaln_modulate",
    "adaln_modulate_ref",
    "extension_has_cuda", "flow_step", "flow_step_ref", "flow_step_patchify", "flow_step_patchify_ref", "frame_causal_attention", "frame_causal_attention_ref",
    "gated_residual_adaln", "gated_residual_adaln_ref", "noisy_context", "noisy_context_ref", "reference_ops",
    "resolve_backend", "triton_usable",
]
