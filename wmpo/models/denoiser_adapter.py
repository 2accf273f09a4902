"""DenoiserWorldModel: a user's own video denoiser as the world model of WorldModelEnv, WorldModelVecEnv,
the imagination engine and `wmpo bench --model`.

The denoiser is any callable (usually an nn.Module)

    denoiser(x_t, t, actions) -> velocity          (step_conditioned: denoiser(x_t, t, actions, step_size=d))

  x_t      [B, T, C, h, w] latents (layout "BTCHW"; "BCTHW" gives [B, C, T, h, w], Open-Sora's order),
           T = num_context + chunk_len: the c context frames first, then the K frames being denoised
  t        [B, T] per-frame flow time times `time_scale` (wmpo: t in [0, 1], 1 = noise,
           x_t = (1 - t) x0 + t noise; Open-Sora's RFLOW: time_scale=1000)
  actions  [B, T, A] per-frame actions normalized to [-1, 1] (context frames carry their actions, zeros
           at an episode start)
  velocity the shape of x_t; wmpo's sign v = noise - x0 (velocity_sign=-1 for models that predict x0 - noise)

The context frames arrive noised to t_context (noisy-frame conditioning, the same in every chunk), the
predicted frames at the sampler's current time. A plain denoiser has no context KV cache: the adapter's
`build_context_cache` keeps the context and `forward_cached` runs the whole window and returns the K
predicted frames (exact; the cost is the uncached one). A model with its own cache implements the
WorldModel interface directly instead (`cfg`, `__call__`, `build_context_cache`, `forward_cached`:
docs/benchmarks.md, "Your own world model").

At construction the adapter checks the signature and makes one probe call at batch 1 (validate=True), so
a wrong factory fails with an error naming the expected and received shapes before any timing starts.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

LAYOUTS = ("BTCHW", "BCTHW")


@dataclass
class DenoiserSpec:
    """The shapes and conventions of a user's denoiser (what WorldModelEnv reads as `wm.cfg`)."""

    num_context: int
    """c: context frames per window"""
    chunk_len: int
    """K: frames predicted per action chunk"""
    action_dim: int
    """A: action dimensions"""
    latent_channels: int
    """C: latent channels (the VAE's)"""
    latent_size: int
    """h = w: latent side (the VAE's)"""
    t_context: float = 0.05
    """flow time of the context frames (noisy-frame conditioning)"""
    step_conditioned: bool = False
    """the denoiser also takes step_size= (a few-step / shortcut student)"""

    @property
    def window(self) -> int:
        return self.num_context + self.chunk_len


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) <= 0:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return int(v)


def _accepts_three_positional(fn: Callable, step_conditioned: bool = False) -> str | None:
    """None when fn(a, b, c) (step_conditioned: fn(a, b, c, step_size=d)) binds, else why not."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins / C callables: the probe call decides
    try:
        sig.bind(None, None, None, **({"step_size": None} if step_conditioned else {}))
    except TypeError as e:
        want = "(x_t, t, actions, step_size=)" if step_conditioned else "(x_t, t, actions)"
        return f"its signature {sig} does not take {want}: {e}"
    return None


class DenoiserWorldModel(nn.Module):
    """See the module docstring. `denoiser` is registered as a submodule when it is an nn.Module, so
    `.to()`, `.eval()` and `parameters()` reach its weights."""

    def __init__(self, denoiser: Callable, *, num_context: int, chunk_len: int, action_dim: int, latent_channels: int,
                 latent_size: int, t_context: float = 0.05, time_scale: float = 1.0, velocity_sign: float = 1.0,
                 layout: str = "BTCHW", step_conditioned: bool = False, action_stats: dict | None = None,
                 validate: bool = True):
        super().__init__()
        if not callable(denoiser):
            raise ValueError(f"denoiser: expected a callable denoiser(x_t, t, actions) -> velocity, got {type(denoiser).__name__}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        if velocity_sign not in (1, -1, 1.0, -1.0):
            raise ValueError(f"velocity_sign: expected +1 or -1, got {velocity_sign!r}")
        if not (isinstance(time_scale, (int, float)) and time_scale > 0):
            raise ValueError(f"time_scale: expected a positive number, got {time_scale!r}")
        tc = float(t_context)
        tc = tc / 1000.0 if tc > 1.0 else tc
        if not 0.0 <= tc < 1.0:
            raise ValueError(f"t_context: expected a flow time in [0, 1) (or diffusion steps out of 1000), got {t_context!r}")
        self.cfg = DenoiserSpec(num_context=_positive_int("num_context", num_context), chunk_len=_positive_int("chunk_len", chunk_len),
                                action_dim=_positive_int("action_dim", action_dim),
                                latent_channels=_positive_int("latent_channels", latent_channels),
                                latent_size=_positive_int("latent_size", latent_size), t_context=tc,
                                step_conditioned=bool(step_conditioned))
        why = _accepts_three_positional(denoiser, bool(step_conditioned))
        if why:
            raise ValueError(f"denoiser: expected denoiser(x_t, t, actions) -> velocity; {why}")
        if isinstance(denoiser, nn.Module):
            self.denoiser = denoiser
        else:
            self._fn = denoiser
        self.time_scale, self.velocity_sign, self.layout = float(time_scale), float(velocity_sign), layout
        self.action_stats = action_stats
        if action_stats is not None:
            for k in ("q01", "q99"):
                if k not in action_stats or np.asarray(action_stats[k]).shape != (self.cfg.action_dim,):
                    raise ValueError(f"action_stats: expected q01/q99 of shape ({self.cfg.action_dim},), got "
                                     f"{ {k: np.asarray(v).shape for k, v in action_stats.items()} }")
        if validate:
            self.validate()

    # ------------------------------------------------------------------ the user's call
    @property
    def fn(self) -> Callable:
        return self.denoiser if "denoiser" in self._modules else self._fn

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters(), None)
        return (p.device, p.dtype if p.dtype.is_floating_point else torch.float32) if p is not None else (torch.device("cpu"), torch.float32)

    def _invoke(self, x_t: torch.Tensor, t_frames: torch.Tensor, actions: torch.Tensor,
                step_size: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """(x as the denoiser sees it, its raw output)."""
        _, dtype = self._device_dtype()
        x = x_t.to(dtype)
        if self.layout == "BCTHW":
            x = x.transpose(1, 2)
        t = t_frames.float() * self.time_scale
        args = (x, t.to(dtype), actions.to(dtype))
        if self.cfg.step_conditioned:
            d = step_size if step_size is not None else torch.zeros_like(t_frames)
            return x, self.fn(*args, step_size=d.to(dtype))
        return x, self.fn(*args)

    def _velocity(self, x: torch.Tensor, v: Any) -> torch.Tensor:
        """Check the denoiser's output and bring it to wmpo's layout and sign."""
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"denoiser: expected a velocity tensor shaped like x_t {tuple(x.shape)}, got {type(v).__name__}")
        if v.shape != x.shape:
            raise ValueError(f"denoiser: expected a velocity shaped like x_t {tuple(x.shape)} ({self.layout}), got {tuple(v.shape)}")
        if not v.is_floating_point():
            raise ValueError(f"denoiser: expected a floating velocity, got {v.dtype}")
        if self.layout == "BCTHW":
            v = v.transpose(1, 2)
        return v * self.velocity_sign if self.velocity_sign != 1.0 else v

    def _call(self, x_t: torch.Tensor, t_frames: torch.Tensor, actions: torch.Tensor, step_size: torch.Tensor | None) -> torch.Tensor:
        return self._velocity(*self._invoke(x_t, t_frames, actions, step_size))

    def _check(self, name: str, x: torch.Tensor, T: int) -> None:
        c = self.cfg
        want = (T, c.latent_channels, c.latent_size, c.latent_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{name}: expected [B, {T}, {c.latent_channels}, {c.latent_size}, {c.latent_size}], got {tuple(x.shape)}")

    # ------------------------------------------------------------------ the WorldModel interface
    def forward(self, x_t: torch.Tensor, t_frames: torch.Tensor, actions: torch.Tensor,
                step_size: torch.Tensor | None = None) -> torch.Tensor:
        """x_t [B, T, C, h, w], t_frames [B, T] in [0, 1], actions [B, T, A] -> velocity [B, T, C, h, w]."""
        T = x_t.shape[1] if x_t.ndim == 5 else -1
        self._check("x_t", x_t, T)
        if tuple(t_frames.shape) != tuple(x_t.shape[:2]) or tuple(actions.shape) != (*x_t.shape[:2], self.cfg.action_dim):
            raise ValueError(f"t_frames/actions: expected [B, T] and [B, T, {self.cfg.action_dim}] for x_t {tuple(x_t.shape)}, "
                             f"got {tuple(t_frames.shape)} and {tuple(actions.shape)}")
        return self._call(x_t, t_frames, actions, step_size)

    def build_context_cache(self, context_latents: torch.Tensor, context_actions: torch.Tensor,
                            t_context: torch.Tensor | float) -> dict[str, Any]:
        """No KV cache for a plain denoiser: keeps the (noised) context for `forward_cached`."""
        c = self.cfg
        self._check("context_latents", context_latents, c.num_context)
        B = context_latents.shape[0]
        tc = torch.as_tensor(t_context, device=context_latents.device, dtype=torch.float32).expand(B, c.num_context)
        return {"context": context_latents, "actions": context_actions, "t": tc}

    def forward_cached(self, x_t: torch.Tensor, t_frames: torch.Tensor, actions: torch.Tensor, cache: dict[str, Any],
                       step_size: torch.Tensor | None = None) -> torch.Tensor:
        """The K predicted frames' velocity: the whole window (context + x_t) through the denoiser."""
        c = self.cfg
        self._check("x_t", x_t, c.chunk_len)
        full = torch.cat([cache["context"].to(x_t.dtype), x_t], 1)
        t = torch.cat([cache["t"], t_frames.float()], 1)
        a = torch.cat([cache["actions"].to(actions.dtype), actions], 1)
        d = None
        if c.step_conditioned and step_size is not None:
            d = torch.cat([torch.zeros_like(cache["t"]), torch.as_tensor(step_size, device=t.device).float().expand_as(t_frames)], 1)
        return self._call(full, t, a, d)[:, c.num_context:].contiguous()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> None:
        """One call at batch 1 on the model's device: the signature, the output's shape and dtype."""
        c = self.cfg
        dev, _ = self._device_dtype()
        x = torch.randn(1, c.window, c.latent_channels, c.latent_size, c.latent_size, device=dev)
        t = torch.full((1, c.window), 0.5, device=dev)
        t[:, :c.num_context] = c.t_context
        a = torch.zeros(1, c.window, c.action_dim, device=dev)
        shown = tuple(x.shape) if self.layout == "BTCHW" else (1, c.latent_channels, c.window, c.latent_size, c.latent_size)
        try:
            xs, out = self._invoke(x, t, a, torch.zeros_like(t) if c.step_conditioned else None)
        except Exception as e:  # noqa: BLE001 - the user's code: name what it was called with
            raise ValueError(f"denoiser: the probe call denoiser(x_t {shown}, t {tuple(t.shape)}, actions {tuple(a.shape)}"
                             f"{', step_size=...' if c.step_conditioned else ''}) raised {type(e).__name__}: {e}") from e
        v = self._velocity(xs, out)
        if not torch.isfinite(v).all():
            raise ValueError("denoiser: the probe call returned non-finite values (NaN/inf)")


def is_world_model(obj: Any) -> bool:
    """Whether `obj` provides what WorldModelEnv calls: cfg (num_context, chunk_len, action_dim, latent_channels,
    latent_size, t_context), build_context_cache, forward_cached and __call__."""
    cfg = getattr(obj, "cfg", None)
    fields_ok = cfg is not None and all(hasattr(cfg, k) for k in ("num_context", "chunk_len", "action_dim", "latent_channels",
                                                                   "latent_size", "t_context"))
    return fields_ok and callable(obj) and all(callable(getattr(obj, m, None)) for m in ("build_context_cache", "forward_cached"))


__all__ = ["DenoiserWorldModel", "DenoiserSpec", "is_world_model", "LAYOUTS"]
