"""Public API of wmpo's fused ops, their plain-PyTorch references (*_ref), and backend dispatch.

Exact semantics (shapes contiguous, last dim D): see docs/ops.md. Every public op is a
``torch.library.custom_op`` (namespace ``wmpo``) with a fake implementation, so it works inside
``torch.compile(fullgraph=True)``; adaln_modulate, gated_residual_adaln and action_logprob have
backward passes. Backends: ``triton`` (kernels/), ``cuda`` and ``cpp`` (the compiled extension
wmpo._C, ops under torch.ops.wmpo_C) and ``ref``; chosen by ``WMPO_BACKEND`` or ``backend=``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from wmpo.utils.checks import check_same_device, check_tensor
from wmpo.utils.logging import warn_once

try:  # the compiled extension registers torch.ops.wmpo_C.*
    from wmpo import _C  # noqa: F401

    HAS_EXTENSION = True
    _EXTENSION_ERROR = ""
except ImportError as _e:  # pragma: no cover - depends on the build
    HAS_EXTENSION = False
    _EXTENSION_ERROR = str(_e)

BACKENDS = ("auto", "triton", "cuda", "cpp", "ref")
NUM_BINS = 256


def adaln_modulate_ref(x, shift, scale, *, tokens_per_frame: int, eps: float = 1e-6):
    """y = layer_norm(x) * (1 + scale[f]) + shift[f], f = row // tokens_per_frame. x [R, D]; shift/scale [F, D]."""
    n = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    sc = scale.float().repeat_interleave(tokens_per_frame, 0)
    sh = shift.float().repeat_interleave(tokens_per_frame, 0)
    return (n * (1 + sc) + sh).to(x.dtype)


def gated_residual_adaln_ref(residual, y, gate, shift, scale, *, tokens_per_frame: int, eps: float = 1e-6):
    """out = residual + gate[f] * y; h = layer_norm(out) * (1 + scale[f]) + shift[f]. Returns (out, h)."""
    g = gate.float().repeat_interleave(tokens_per_frame, 0)
    out = (residual.float() + g * y.float()).to(residual.dtype)
    h = adaln_modulate_ref(out, shift, scale, tokens_per_frame=tokens_per_frame, eps=eps)
    return out, h


def noisy_context_ref(x0, noise, t, *, num_context: int, t_context: float):
    """Rectified-flow noising with context frames at t_context. x0/noise [B, T, ...], t [B]. Returns (x_t, t_frames [B, T])."""
    B, T = x0.shape[:2]
    tf = t.float().view(B, 1).expand(B, T).clone()
    tf[:, :num_context] = t_context
    w = tf.view(B, T, *([1] * (x0.dim() - 2)))
    xt = ((1 - w) * x0.float() + w * noise.float()).to(x0.dtype)
    return xt, tf


def flow_step_ref(x, v, t_now, t_next, *, num_context: int):
    """In place: x[:, c:] += (t_next - t_now) * v[:, c:]. t_now/t_next: [B] tensors or floats. Returns x."""
    B = x.shape[0]
    dt = torch.as_tensor(t_next, dtype=torch.float32, device=x.device) - torch.as_tensor(t_now, dtype=torch.float32, device=x.device)
    dt = dt.expand(B) if dt.dim() == 0 else dt
    dt = dt.view(B, *([1] * (x.dim() - 1)))
    x[:, num_context:] = (x[:, num_context:].float() + dt * v[:, num_context:].float()).to(x.dtype)
    return x


def action_logprob_ref(logits, tokens, *, temperature: float = 1.0):
    """(logp, entropy) per token of softmax(logits / temperature). logits [..., 256], tokens [...] int64.

    Masked bins (-inf logits) have probability 0 and add nothing to the entropy (finite). A row whose
    log-sum-exp is not finite (a +inf or NaN logit, or every bin masked) gives NaN logp and entropy,
    in every backend.
    """
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    p = torch.softmax(z, dim=-1)
    ent = lse - (p * torch.where(p > 0, z, torch.zeros_like(z))).sum(-1)
    bad = ~torch.isfinite(lse)
    nan = torch.full_like(lse, float("nan"))
    return torch.where(bad, nan, logp), torch.where(bad, nan, ent)


# ------------------------------------------------------------------------------------ dispatch


def extension_has_cuda() -> bool:
    """True when wmpo._C was compiled with its CUDA kernels."""
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("wmpo_C::adaln_modulate", "CUDA")


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_usable(device_type: str) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors in the interpreter (TRITON_INTERPRET=1)."""
    if not _triton_importable():
        return False
    return device_type == "cuda" or (device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def resolve_backend(device, backend: Optional[str] = None) -> str:
    """The backend an op on `device` runs with: `backend` if given, else env WMPO_BACKEND (default auto).

    auto = triton (else cuda) on GPU tensors, cpp on CPU tensors, ref as the last resort. An explicit
    backend that cannot run on `device` falls back to auto; every fallback warns once.
    """
    want = (backend or os.environ.get("WMPO_BACKEND") or "auto").strip().lower()
    dev = torch.device(device).type if not isinstance(device, torch.device) else device.type
    return _resolve(want, dev, os.environ.get("TRITON_INTERPRET") == "1")


@functools.lru_cache(maxsize=None)
def _resolve(want: str, dev: str, _interp: bool) -> str:
    if want not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} (argument or WMPO_BACKEND), got {want!r}")
    if want == "ref":
        return "ref"
    if want == "triton":
        if triton_usable(dev):
            return "triton"
        warn_once(f"wmpo.ops.no-triton.{dev}", f"wmpo.ops: backend 'triton' cannot run on {dev} tensors "
                  "(no triton, or CPU without TRITON_INTERPRET=1); using backend 'auto' instead")
    elif want == "cuda":
        if dev == "cuda" and extension_has_cuda():
            return "cuda"
        warn_once(f"wmpo.ops.no-cuda.{dev}", f"wmpo.ops: backend 'cuda' is not available for {dev} tensors "
                  "(wmpo._C without CUDA kernels, or not a CUDA tensor); using backend 'auto' instead")
    elif want == "cpp":
        if dev == "cpu" and HAS_EXTENSION:
            return "cpp"
        warn_once(f"wmpo.ops.no-cpp.{dev}", f"wmpo.ops: backend 'cpp' is not available for {dev} tensors; "
                  "using backend 'auto' instead")
    if dev == "cuda":
        if triton_usable("cuda"):
            return "triton"
        if extension_has_cuda():
            return "cuda"
    elif dev == "cpu" and HAS_EXTENSION:
        return "cpp"
    why = _EXTENSION_ERROR if not HAS_EXTENSION else "no fused kernel for this device"
    warn_once(f"wmpo.ops.ref.{dev}", f"wmpo.ops: no fused backend for {dev} tensors ({why}); "
              "falling back to the plain-PyTorch reference ops (slow). Build the extension with "
              "`pip install --no-build-isolation -e .`")
    return "ref"


def _pick(backend: str, *tensors: Tensor) -> str:
    """Backend for one call; mixed floating dtypes run the reference (the AdaLN ops use _pick_adaln)."""
    be = resolve_backend(tensors[0].device, backend or None)
    if be != "ref":
        dts = {t.dtype for t in tensors if t is not None and t.is_floating_point()}
        if len(dts) > 1:
            warn_once("wmpo.ops.mixed-dtype", f"wmpo.ops: inputs with mixed dtypes {sorted(map(str, dts))} "
                      "run the reference implementation; pass one dtype to use the fused kernels")
            return "ref"
    return be


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def adaln_fusable_dtypes(row_dtype: torch.dtype, mod_dtype: torch.dtype) -> bool:
    """True when the fused AdaLN kernels take rows (x / residual, and the outputs) in `row_dtype` with
    per-frame modulation (and y) in `mod_dtype`: one dtype, or fp32 rows with bf16/fp16 modulation
    (the autocast case: fp32 residual stream, bf16 linear outputs)."""
    return row_dtype == mod_dtype or (row_dtype == torch.float32 and mod_dtype in _LOW_PRECISION)


def _pick_adaln(backend: str, x: Tensor, mod_dtype: torch.dtype) -> str:
    """Backend for an AdaLN call whose rows are x.dtype and whose modulation is mod_dtype."""
    be = resolve_backend(x.device, backend or None)
    if be != "ref" and not adaln_fusable_dtypes(x.dtype, mod_dtype):
        warn_once("wmpo.ops.mixed-dtype-adaln", f"wmpo.ops: AdaLN rows in {x.dtype} with modulation in {mod_dtype} "
                  "run the reference implementation (fused: one dtype, or fp32 rows with bf16/fp16 modulation)")
        return "ref"
    return be


def _as(dtype: torch.dtype, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The small per-frame tensors in the modulation dtype (a no-op when they already are)."""
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _eager_direct(*tensors: Tensor) -> bool:
    """Skip the custom-op layer (its dispatch overhead) when neither torch.compile nor autograd needs it."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _kernel(name: str):
    return importlib.import_module(f"wmpo.kernels.{name}")


def _ext():
    return torch.ops.wmpo_C


# ------------------------------------------------------------------------------------ validation


def _check_rows(x, shift, scale, tokens_per_frame, xname="x", extra_rows=(), extra_frames=()):
    check_tensor(xname, x, ndim=2, floating=True)
    R, D = x.shape
    if isinstance(tokens_per_frame, bool) or not isinstance(tokens_per_frame, int) or tokens_per_frame <= 0:
        raise ValueError(f"tokens_per_frame: expected a positive int, got {tokens_per_frame!r}")
    if R % tokens_per_frame != 0:
        raise ValueError(f"tokens_per_frame: {xname} has {R} rows, not a multiple of tokens_per_frame={tokens_per_frame}")
    nf = R // tokens_per_frame
    for name, t in (("shift", shift), ("scale", scale), *extra_frames):
        check_tensor(name, t, ndim=2, floating=True)
        check_tensor(name, t, shape=(nf, D))
    for name, t in extra_rows:
        check_tensor(name, t, ndim=2, floating=True)
        check_tensor(name, t, shape=(R, D))
    check_same_device(**{xname: x, "shift": shift, "scale": scale}, **dict(extra_rows), **dict(extra_frames))


def _check_frames(name, x):
    check_tensor(name, x, floating=True)
    if x.dim() < 2:
        raise ValueError(f"{name}: expected [B, T, ...] (at least 2 dims), got shape {tuple(x.shape)}")


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a finite float >= 0, got {eps!r}")


def _check_num_context(num_context, T):
    if isinstance(num_context, bool) or not isinstance(num_context, int) or not 0 <= num_context <= T:
        raise ValueError(f"num_context: expected an int in [0, {T}], got {num_context!r}")


# ------------------------------------------------------------------------------------ reference backward math


def _adaln_backward_ref(dy, x, scale, tpf, eps):
    R, D = x.shape
    nf = R // tpf
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt(((xf - mean) ** 2).mean(-1, keepdim=True) + eps)
    xhat = (xf - mean) * rstd
    dyf = dy.float().view(nf, tpf, D)
    dshift = dyf.sum(1)
    dscale = (dyf * xhat.view(nf, tpf, D)).sum(1)
    g = (dyf * (1 + scale.float()).unsqueeze(1)).view(R, D)
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    return dx.to(x.dtype), dshift.to(scale.dtype), dscale.to(scale.dtype)


def _action_logprob_backward_ref(g_logp, g_ent, logits, tokens, temperature):
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    logp_all = z - lse
    p = logp_all.exp()
    logp_all = torch.where(p > 0, logp_all, torch.zeros_like(logp_all))  # masked bins: p log p = 0
    ent = -(p * logp_all).sum(-1, keepdim=True)
    dz = -g_logp.float().unsqueeze(-1) * p - g_ent.float().unsqueeze(-1) * p * (logp_all + ent)
    dz = dz.scatter_add(-1, tokens.unsqueeze(-1), g_logp.float().unsqueeze(-1))
    dz = torch.where(torch.isfinite(lse), dz, torch.full_like(dz, float("nan")))
    return (dz / temperature).to(logits.dtype)


# ------------------------------------------------------------------------------------ custom ops


def _adaln_modulate_op_impl(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float, backend: str) -> Tensor:
    be = _pick_adaln(backend, x, shift.dtype)
    if be != "ref":
        (scale,) = _as(shift.dtype, scale)
    if be == "triton":
        return _kernel("adaln_modulate").adaln_modulate(x, shift, scale, tokens_per_frame, eps)
    if be in ("cpp", "cuda"):
        return _ext().adaln_modulate(x, shift, scale, tokens_per_frame, eps)
    return adaln_modulate_ref(x, shift, scale, tokens_per_frame=tokens_per_frame, eps=eps).contiguous()


@torch.library.custom_op("wmpo::adaln_modulate", mutates_args=())
def _adaln_modulate_op(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float, backend: str) -> Tensor:
    return _adaln_modulate_op_impl(x, shift, scale, tokens_per_frame, eps, backend)


@_adaln_modulate_op.register_fake
def _(x, shift, scale, tokens_per_frame, eps, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("wmpo::adaln_modulate_backward", mutates_args=())
def _adaln_modulate_bwd_op(dy: Tensor, x: Tensor, scale: Tensor, tokens_per_frame: int, eps: float,
                           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    be = _pick_adaln(backend, x, scale.dtype)
    if be in ("cpp", "cuda"):  # the kernel takes one dtype: scale is small, cast it (dy is cast inside)
        dx, dsh, dsc = _ext().adaln_modulate_bwd(dy, x, scale.to(x.dtype), tokens_per_frame, eps)
        return dx, dsh.to(scale.dtype), dsc.to(scale.dtype)
    return _adaln_backward_ref(dy, x, scale, tokens_per_frame, eps)


@_adaln_modulate_bwd_op.register_fake
def _(dy, x, scale, tokens_per_frame, eps, backend):
    cf = torch.contiguous_format  # the kernels return contiguous tensors; the fakes must say so
    return torch.empty_like(x, memory_format=cf), torch.empty_like(scale, memory_format=cf), torch.empty_like(scale, memory_format=cf)


def _adaln_setup(ctx, inputs, output):
    x, shift, scale, tpf, eps, backend = inputs
    ctx.save_for_backward(x, scale)
    ctx.args = (tpf, eps, backend)
    ctx.shift_dtype = shift.dtype


def _adaln_backward(ctx, dy):
    x, scale = ctx.saved_tensors
    dx, dsh, dsc = _adaln_modulate_bwd_op(dy.contiguous(), x, scale, *ctx.args)
    return dx, dsh.to(ctx.shift_dtype), dsc, None, None, None


_adaln_modulate_op.register_autograd(_adaln_backward, setup_context=_adaln_setup)


def _gated_residual_adaln_op_impl(residual: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor,
                             tokens_per_frame: int, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    be = _pick_adaln(backend, residual, y.dtype)
    if be != "ref":
        gate, shift, scale = _as(y.dtype, gate, shift, scale)
    if be == "triton":
        return _kernel("gated_residual_adaln").gated_residual_adaln(residual, y, gate, shift, scale, tokens_per_frame, eps)
    if be in ("cpp", "cuda"):
        return tuple(_ext().gated_residual_adaln(residual, y, gate, shift, scale, tokens_per_frame, eps))
    out, h = gated_residual_adaln_ref(residual, y, gate, shift, scale, tokens_per_frame=tokens_per_frame, eps=eps)
    return out.contiguous().clone() if out.data_ptr() == residual.data_ptr() else out.contiguous(), h.contiguous()


@torch.library.custom_op("wmpo::gated_residual_adaln", mutates_args=())
def _gated_residual_adaln_op(residual: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float,
                             backend: str) -> tuple[Tensor, Tensor]:
    return _gated_residual_adaln_op_impl(residual, y, gate, shift, scale, tokens_per_frame, eps, backend)


@_gated_residual_adaln_op.register_fake
def _(residual, y, gate, shift, scale, tokens_per_frame, eps, backend):
    cf = torch.contiguous_format
    return torch.empty_like(residual, memory_format=cf), torch.empty_like(residual, memory_format=cf)


def _gated_setup(ctx, inputs, output):
    residual, y, gate, shift, scale, tpf, eps, backend = inputs
    ctx.save_for_backward(output[0], y, gate, scale)
    ctx.args = (tpf, eps, backend)
    ctx.dtypes = (residual.dtype, shift.dtype)


def _gated_backward(ctx, dout, dh):
    out, y, gate, scale = ctx.saved_tensors
    tpf, eps, backend = ctx.args
    R, D = out.shape
    nf = R // tpf
    if dh is None:
        dh = torch.zeros_like(out)
    dx, dsh, dsc = _adaln_modulate_bwd_op(dh.contiguous(), out, scale, tpf, eps, backend)
    dtot = dx.float() if dout is None else dx.float() + dout.float()
    dtv = dtot.view(nf, tpf, D)
    dy = (dtv * gate.float().unsqueeze(1)).view(R, D).to(y.dtype)
    dgate = (dtv * y.float().view(nf, tpf, D)).sum(1).to(gate.dtype)
    return dtot.to(ctx.dtypes[0]), dy, dgate, dsh.to(ctx.dtypes[1]), dsc, None, None, None


_gated_residual_adaln_op.register_autograd(_gated_backward, setup_context=_gated_setup)


def _noisy_context_op_impl(x0: Tensor, noise: Tensor, t: Tensor, num_context: int, t_context: float,
                      backend: str) -> tuple[Tensor, Tensor]:
    be = _pick(backend, x0, noise)
    if be == "triton":
        return _kernel("noisy_context").noisy_context(x0, noise, t, num_context, t_context)
    if be in ("cpp", "cuda"):
        return tuple(_ext().noisy_context(x0, noise, t, num_context, t_context))
    xt, tf = noisy_context_ref(x0, noise, t, num_context=num_context, t_context=t_context)
    return xt.contiguous().clone() if xt.data_ptr() == x0.data_ptr() else xt.contiguous(), tf


@torch.library.custom_op("wmpo::noisy_context", mutates_args=())
def _noisy_context_op(x0: Tensor, noise: Tensor, t: Tensor, num_context: int, t_context: float, backend: str) -> tuple[Tensor, Tensor]:
    return _noisy_context_op_impl(x0, noise, t, num_context, t_context, backend)


@_noisy_context_op.register_fake
def _(x0, noise, t, num_context, t_context, backend):
    return torch.empty_like(x0, memory_format=torch.contiguous_format), x0.new_empty(x0.shape[:2], dtype=torch.float32)


def _flow_step_op_impl(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
                  t_next_value: float, num_context: int, backend: str) -> None:
    be = _pick(backend, x, v)
    if be != "ref" and not x.is_contiguous():
        be = "ref"
    if be == "triton":
        _kernel("flow_step").flow_step_(x, v, t_now, t_next, t_now_value, t_next_value, num_context)
    elif be in ("cpp", "cuda"):
        _ext().flow_step_(x, v, t_now, t_next, t_now_value, t_next_value, num_context)
    else:
        flow_step_ref(x, v, t_now_value if t_now is None else t_now, t_next_value if t_next is None else t_next,
                      num_context=num_context)


@torch.library.custom_op("wmpo::flow_step_", mutates_args=("x",))
def _flow_step_op(x: Tensor, v: Tensor, t_now: Optional[Tensor], t_next: Optional[Tensor], t_now_value: float,
                  t_next_value: float, num_context: int, backend: str) -> None:
    _flow_step_op_impl(x, v, t_now, t_next, t_now_value, t_next_value, num_context, backend)


@_flow_step_op.register_fake
def _(x, v, t_now, t_next, t_now_value, t_next_value, num_context, backend):
    return None


def _action_logprob_op_impl(logits: Tensor, tokens: Tensor, temperature: float, backend: str) -> tuple[Tensor, Tensor]:
    be = _pick(backend, logits)
    if be == "triton":
        return _kernel("action_logprob").action_logprob(logits, tokens, temperature)
    if be in ("cpp", "cuda"):
        return tuple(_ext().action_logprob(logits, tokens, temperature))
    return action_logprob_ref(logits, tokens, temperature=temperature)


@torch.library.custom_op("wmpo::action_logprob", mutates_args=())
def _action_logprob_op(logits: Tensor, tokens: Tensor, temperature: float, backend: str) -> tuple[Tensor, Tensor]:
    return _action_logprob_op_impl(logits, tokens, temperature, backend)


@_action_logprob_op.register_fake
def _(logits, tokens, temperature, backend):
    shp = logits.shape[:-1]
    return logits.new_empty(shp, dtype=torch.float32), logits.new_empty(shp, dtype=torch.float32)


@torch.library.custom_op("wmpo::action_logprob_backward", mutates_args=())
def _action_logprob_bwd_op(g_logp: Tensor, g_ent: Tensor, logits: Tensor, tokens: Tensor, temperature: float,
                           backend: str) -> Tensor:
    be = _pick(backend, logits)
    if be in ("cpp", "cuda"):
        return _ext().action_logprob_bwd(g_logp, g_ent, logits, tokens, temperature)
    return _action_logprob_backward_ref(g_logp, g_ent, logits, tokens, temperature)


@_action_logprob_bwd_op.register_fake
def _(g_logp, g_ent, logits, tokens, temperature, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _logprob_setup(ctx, inputs, output):
    logits, tokens, temperature, backend = inputs
    ctx.save_for_backward(logits, tokens)
    ctx.args = (temperature, backend)


def _logprob_backward(ctx, g_logp, g_ent):
    logits, tokens = ctx.saved_tensors
    if g_logp is None:
        g_logp = logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    if g_ent is None:
        g_ent = logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return _action_logprob_bwd_op(g_logp.contiguous(), g_ent.contiguous(), logits, tokens, *ctx.args), None, None, None


_action_logprob_op.register_autograd(_logprob_backward, setup_context=_logprob_setup)


# ------------------------------------------------------------------------------------ public API


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, *, tokens_per_frame: int, eps: float = 1e-6,
                   backend: Optional[str] = None) -> Tensor:
    """y = layer_norm(x) * (1 + scale[f]) + shift[f], f = row // tokens_per_frame. x [R, D]; shift/scale [F, D]."""
    _check_rows(x, shift, scale, tokens_per_frame)
    _check_eps(eps)
    op = _adaln_modulate_op_impl if _eager_direct(x, shift, scale) else _adaln_modulate_op
    return op(x, shift, scale, tokens_per_frame, float(eps), backend or "")


def gated_residual_adaln(residual: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, *,
                         tokens_per_frame: int, eps: float = 1e-6, backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(out, h): out = residual + gate[f] * y; h = layer_norm(out) * (1 + scale[f]) + shift[f]."""
    _check_rows(residual, shift, scale, tokens_per_frame, xname="residual", extra_rows=(("y", y),),
                extra_frames=(("gate", gate),))
    _check_eps(eps)
    op = _gated_residual_adaln_op_impl if _eager_direct(residual, y, gate, shift, scale) else _gated_residual_adaln_op
    return op(residual, y, gate, shift, scale, tokens_per_frame, float(eps), backend or "")


def noisy_context(x0: Tensor, noise: Tensor, t: Tensor, *, num_context: int, t_context: float,
                  backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(x_t, t_frames [B, T] fp32): frames < num_context at t_context, the rest at t[b]; x_t = (1-tf) x0 + tf noise."""
    _check_frames("x0", x0)
    check_tensor("noise", noise, floating=True, shape=tuple(x0.shape))
    check_tensor("t", t, floating=True, shape=(x0.shape[0],))
    check_same_device(x0=x0, noise=noise, t=t)
    _check_num_context(num_context, x0.shape[1])
    if isinstance(t_context, bool) or not isinstance(t_context, (int, float)) or not 0.0 <= t_context <= 1.0:
        raise ValueError(f"t_context: expected a float in [0, 1] (flow time of the context frames), got {t_context!r}")
    op = _noisy_context_op_impl if _eager_direct(x0, noise, t) else _noisy_context_op
    return op(x0, noise, t, num_context, float(t_context), backend or "")


def _split_time(name, t, B, x):
    if isinstance(t, Tensor):
        check_tensor(name, t, floating=True)
        if t.dim() > 1 or t.numel() not in (1, B):
            raise ValueError(f"{name}: expected a float, a 0-d tensor or shape ({B},), got shape {tuple(t.shape)}")
        check_same_device(x=x, **{name: t})
        if t.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite times, got {t.tolist()}")
        return (t.reshape(()) if t.numel() == 1 else t), 0.0
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        if not math.isfinite(t):
            raise ValueError(f"{name}: expected a finite float, got {t!r}")
        return None, float(t)
    raise ValueError(f"{name}: expected a float or a tensor, got {type(t).__name__}")


def flow_step(x: Tensor, v: Tensor, t_now, t_next, *, num_context: int, backend: Optional[str] = None) -> Tensor:
    """In place: x[:, c:] += (t_next - t_now) * v[:, c:] (t_now/t_next: floats or [B] tensors). Returns x."""
    _check_frames("x", x)
    check_tensor("v", v, floating=True, shape=tuple(x.shape))
    check_same_device(x=x, v=v)
    _check_num_context(num_context, x.shape[1])
    if torch.is_grad_enabled() and x.requires_grad:
        what = "a leaf Variable that requires grad" if x.is_leaf else "a tensor that requires grad"
        raise RuntimeError(f"flow_step: x is {what} and flow_step updates it in place without a backward "
                           "(a sampler step); call it under torch.no_grad() or on x.detach()")
    tn, tnv = _split_time("t_now", t_now, x.shape[0], x)
    tx, txv = _split_time("t_next", t_next, x.shape[0], x)
    op = _flow_step_op_impl if _eager_direct(x, v) else _flow_step_op
    op(x, v, tn, tx, tnv, txv, num_context, backend or "")
    return x


def action_logprob(logits: Tensor, tokens: Tensor, *, temperature: float = 1.0,
                   backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(logp, entropy) fp32 per token of softmax(logits / temperature). logits [..., 256], tokens [...] int64.

    Token range is checked in eager mode on CPU tensors (on GPU it would need a host sync); an
    out-of-range token gives logp = NaN in the fused kernels.
    """
    check_tensor("logits", logits, floating=True)
    if logits.dim() < 1 or logits.shape[-1] != NUM_BINS:
        raise ValueError(f"logits: expected shape [..., {NUM_BINS}], got {tuple(logits.shape)}")
    check_tensor("tokens", tokens, dtype=(torch.int64, torch.int32), shape=tuple(logits.shape[:-1]))
    check_same_device(logits=logits, tokens=tokens)
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0
            or not math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a positive finite float, got {temperature!r}")
    if tokens.device.type == "cpu" and tokens.numel() and not torch.compiler.is_compiling():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= NUM_BINS:
            raise ValueError(f"tokens: expected values in [0, {NUM_BINS}), got range [{lo}, {hi}]")
    op = _action_logprob_op_impl if _eager_direct(logits) else _action_logprob_op
    return op(logits, tokens.long(), float(temperature), backend or "")


try:  # frame-causal attention lives in its own module (owned by the attention work)
    from wmpo.ops_attention import frame_causal_attention, frame_causal_attention_ref  # noqa: E402,F401
except ModuleNotFoundError as _e:  # only while that module does not exist yet
    if _e.name != "wmpo.ops_attention":
        raise
