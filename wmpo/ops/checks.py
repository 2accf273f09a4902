"""Argument checks shared by the ops: each names the argument, what was expected and what was received."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from wmpo.utils.checks import check_same_device, check_tensor


def check_rows(x, shift, scale, tokens_per_frame, xname="x", extra_rows=(), extra_frames=()):
    """x [R, D] rows in frames of tokens_per_frame rows; shift/scale (and extra_frames) [R / tpf, D];
    extra_rows [R, D]; all on one device."""
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


def check_frames(name, x):
    """x [B, T, ...] floating."""
    check_tensor(name, x, floating=True)
    if x.dim() < 2:
        raise ValueError(f"{name}: expected [B, T, ...] (at least 2 dims), got shape {tuple(x.shape)}")


def check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a finite float >= 0, got {eps!r}")


def check_num_context(num_context, T):
    if isinstance(num_context, bool) or not isinstance(num_context, int) or not 0 <= num_context <= T:
        raise ValueError(f"num_context: expected an int in [0, {T}], got {num_context!r}")


def split_time(name, t, B, x):
    """A flow time given as a float, a 0-d tensor or a [B] tensor -> (tensor or None, float value)."""
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
