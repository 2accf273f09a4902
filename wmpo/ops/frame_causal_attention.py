"""Frame-causal short-sequence attention (the world model's temporal attention) as a fused op.

`frame_causal_attention(q, k, v, *, num_cached=0, scale=None)`: q [N, H, T_q, hd], k/v
[N, H, T_k, hd] with T_k = num_cached + T_q (cached context keys/values first, then the keys of
the T_q query frames). Query i (0-based among T_q) attends to keys 0 .. num_cached + i.
N is batch * spatial tokens, T about 12 frames, hd 64-72.

Backends (WMPO_BACKEND or `reference_ops()`, through wmpo.ops.dispatch like every wmpo op): triton
on CUDA (kernels/temporal_attention.py), the reference (SDPA with an explicit mask) on CPU. "cuda" maps to the Triton kernel, "cpp" to the
reference: this op has no C++ kernel. Backward: explicit fp32 math in PyTorch (any backend).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wmpo.ops import dispatch
from wmpo.utils.checks import check_same_device, check_tensor

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------- reference
def frame_causal_mask(T_q: int, num_cached: int, device=None) -> torch.Tensor:
    """bool [T_q, num_cached + T_q]: True where query i may attend to key j (j <= num_cached + i)."""
    qi = torch.arange(T_q, device=device).unsqueeze(1)
    kj = torch.arange(num_cached + T_q, device=device).unsqueeze(0)
    return kj <= qi + num_cached


def frame_causal_attention_ref(q, k, v, *, num_cached: int = 0, scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch: SDPA with the explicit frame-causal mask, in the inputs' dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = frame_causal_mask(q.shape[2], num_cached, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _attention_backward(q, k, v, grad_out, num_cached: int, scale: float):
    """(dq, dk, dv) of frame-causal attention, recomputing the probabilities in fp32."""
    qf, kf, vf, go = q.float(), k.float(), v.float(), grad_out.float()
    mask = frame_causal_mask(q.shape[2], num_cached, device=q.device)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    dv = torch.matmul(p.transpose(-1, -2), go)
    dp = torch.matmul(go, vf.transpose(-1, -2))
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ---------------------------------------------------------------------------------- dispatch
def _load_kernel():
    try:
        from wmpo.kernels.temporal_attention import frame_causal_attention_triton
    except ImportError:
        try:
            from kernels.temporal_attention import frame_causal_attention_triton
        except ImportError:
            return None
    return frame_causal_attention_triton


def backend_for(q: torch.Tensor, backend: str | None = None) -> str:
    """'triton' or 'ref': what frame_causal_attention runs for inputs like `q` (and `backend`)."""
    want = dispatch.requested_backend(backend)
    explicit = bool(backend) and want not in ("auto", "ref")
    cuda = q.device.type == "cuda"
    if want == "ref" or (want == "auto" and not cuda):  # CPU: the reference is torch's SDPA, by design
        return "ref"
    if q.dtype == torch.float64:
        dispatch.fallback("attn-float64", "wmpo.frame_causal_attention: float64 inputs run the reference (SDPA); "
                          "the Triton kernel takes float32/bfloat16/float16", explicit)
        return "ref"
    if want == "cpp" or (want == "cuda" and not cuda):
        dispatch.fallback(f"attn-no-{want}", f"wmpo.frame_causal_attention: no '{want}' kernel for {q.device.type} "
                          "tensors (attention has a Triton kernel for CUDA tensors only); using the reference (SDPA)",
                          explicit)
        return "ref"
    if not cuda and not dispatch.triton_interpreting():
        dispatch.fallback("attn-triton-cpu", "wmpo.frame_causal_attention: Triton on CPU tensors needs "
                          "TRITON_INTERPRET=1; using the reference (SDPA)", explicit)
        return "ref"
    if _load_kernel() is None:
        dispatch.fallback("attn-no-triton", "wmpo.frame_causal_attention: Triton kernel unavailable (import failed); "
                          "using the reference (SDPA)", explicit)
        return "ref"
    return "triton"


# ---------------------------------------------------------------------------------- custom op
@torch.library.custom_op("wmpo::frame_causal_attention", mutates_args=())
def _frame_causal_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_cached: int, scale: float,
                               backend: str) -> torch.Tensor:
    if backend_for(q, backend or None) == "triton":
        return _load_kernel()(q, k, v, num_cached, scale)
    return frame_causal_attention_ref(q, k, v, num_cached=num_cached, scale=scale).contiguous()


@_frame_causal_attention_op.register_fake
def _(q, k, v, num_cached, scale, backend):
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, num_cached, scale, _backend = inputs
    ctx.save_for_backward(q, k, v)
    ctx.num_cached = num_cached
    ctx.scale = scale


def _backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = _attention_backward(q, k, v, grad_out, ctx.num_cached, ctx.scale)
    return dq, dk, dv, None, None, None


_frame_causal_attention_op.register_autograd(_backward, setup_context=_setup_context)


def frame_causal_attention(q, k, v, *, num_cached: int = 0, scale: float | None = None,
                           backend: str | None = None) -> torch.Tensor:
    """Frame-causal attention; see the module docstring. Returns [N, H, T_q, hd] in q's dtype.

    backend: None = WMPO_BACKEND (auto | triton | cuda | cpp | ref), resolved per device.
    """
    check_tensor("q", q, ndim=4, dtype=_FLOATS)
    check_tensor("k", k, ndim=4, dtype=q.dtype)
    check_tensor("v", v, ndim=4, dtype=q.dtype)
    check_same_device(q=q, k=k, v=v)
    if isinstance(num_cached, bool) or not isinstance(num_cached, int) or num_cached < 0:
        raise ValueError(f"num_cached: expected an int >= 0, got {num_cached!r}")
    N, H, T_q, hd = q.shape
    if hd < 1:
        raise ValueError(f"q: expected a head dim (last dim) >= 1, got shape {tuple(q.shape)}")
    check_tensor("k", k, shape=(N, H, num_cached + T_q, hd))
    check_tensor("v", v, shape=(N, H, num_cached + T_q, hd))
    if scale is None:
        scale = 1.0 / math.sqrt(hd)
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float or None, got {scale!r}")
    if backend is not None and (not isinstance(backend, str) or backend.strip().lower() not in dispatch.BACKENDS):
        raise ValueError(f"backend: expected None or one of {dispatch.BACKENDS}, got {backend!r}")
    if dispatch.reference_forced() and not backend:
        return frame_causal_attention_ref(q, k, v, num_cached=num_cached, scale=float(scale))
    return torch.ops.wmpo.frame_causal_attention(q, k, v, num_cached, float(scale), backend or "")


def attention_flops(N: int, H: int, T_q: int, num_cached: int, hd: int, *, causal: bool = True) -> float:
    """FLOPs of the two matmuls (2 per multiply-add), counting only visible query-key pairs if causal."""
    T_k = num_cached + T_q
    pairs = T_q * num_cached + T_q * (T_q + 1) // 2 if causal else T_q * T_k
    return 4.0 * N * H * pairs * hd
