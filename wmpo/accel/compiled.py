"""Compiled and graph-captured PyTorch for the rollout's hot paths (VAE decoder, policy, chunk).

- `compile_module(module, mode)`: torch.compile with a named mode; on the CPU the CUDA-graph
  modes fall back to their no-graph equivalents (one-time warning).
- `compile_with_fallback(fn, name=...)`: torch.compile whose (lazy) compilation failure at the first
  call warns once and runs `fn` eagerly from then on, instead of ending the run.
- `CompiledDenoiser(world_model)`: the world model with only its denoiser step (forward_cached,
  forward, build_context_cache) compiled with fallback; the rollout engine uses it for compile_chunk.
- `CUDAGraphRunner(fn, *example_inputs)`: captures `fn` once into a CUDA graph with static input
  and output buffers; each call copies the new inputs into the static buffers and replays. With no
  example inputs, `fn` is a zero-argument callable that mutates preallocated state in place (the
  rollout chunk). On the CPU (or without CUDA) it calls `fn` eagerly, with a one-time warning.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

from wmpo.utils.logging import warn_once

COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CPU_MODE = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def _module_device(module: Any) -> torch.device | None:
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            return p.device
        for b in module.buffers():
            return b.device
    return None


def compile_module(
    module: Callable,
    mode: str | None = "max-autotune-no-cudagraphs",
    *,
    fullgraph: bool = False,
    dynamic: bool | None = False,
    device: torch.device | str | None = None,
) -> Callable:
    """torch.compile `module` (an nn.Module or any callable) in `mode`.

    mode: "eager" or None returns `module` unchanged; "default", "max-autotune-no-cudagraphs",
    "reduce-overhead" (CUDA graphs), "max-autotune" (autotuning + CUDA graphs). `device` (default:
    the module's parameters' device, else cuda if available) decides whether the CUDA-graph modes
    can be used; on the CPU they become "default" / "max-autotune-no-cudagraphs".
    """
    if mode is None or mode == "eager":
        return module
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode: expected one of {COMPILE_MODES}, got {mode!r}")
    dev = torch.device(device) if device is not None else _module_device(module)
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" and mode in _CPU_MODE:
        warn_once(f"compile-mode-cpu-{mode}", f"wmpo.accel.compile_module: mode {mode!r} uses CUDA graphs, "
                  f"which need a CUDA device; compiling with {_CPU_MODE[mode]!r} on {dev}")
        mode = _CPU_MODE[mode]
    kwargs = {} if mode == "default" else {"mode": mode}
    return torch.compile(module, fullgraph=fullgraph, dynamic=dynamic, **kwargs)


class CUDAGraphRunner:
    """Capture `fn(*example_inputs)` in a CUDA graph; `runner(*inputs)` copies and replays.

    - Tensor inputs are copied into static buffers (same shape and dtype required); non-tensor
      inputs are baked into the graph and must not change.
    - Returns the static outputs (overwritten by the next replay) unless `clone_outputs`.
    - `warmup`: eager runs on a side stream before capture (lazy init, cuBLAS handles, autotuning).
      Default: 2 when example inputs are given, 0 for a zero-argument in-place callable (running it
      would advance its state: the caller warms it up itself). Capture itself runs no work.
    - `pool`: a graph memory pool (torch.cuda.graph_pool_handle()) to share between runners.
    - CPU / no CUDA: calls `fn` eagerly (one-time warning).
    """

    def __init__(
        self,
        fn: Callable,
        *example_inputs: Any,
        warmup: int | None = None,
        pool: Any = None,
        device: torch.device | str | None = None,
        clone_outputs: bool = False,
    ):
        if not callable(fn):
            raise ValueError(f"fn: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.clone_outputs = clone_outputs
        tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
        if device is not None:
            self.device = torch.device(device)
        elif tensors:
            self.device = tensors[0].device
        else:
            self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        for i, t in enumerate(tensors):
            if t.device != self.device:
                raise ValueError(f"example_inputs[{i}]: expected device {self.device}, got {t.device}")
        self.graph = None
        self.static_inputs: tuple = ()
        self.static_outputs: Any = None
        self.enabled = self.device.type == "cuda" and torch.cuda.is_available()
        if not self.enabled:
            warn_once("cuda-graph-cpu", f"wmpo.accel.CUDAGraphRunner: CUDA graphs need a CUDA device (got {self.device}); "
                      "running the function eagerly")
            return
        if warmup is None:
            warmup = 2 if example_inputs else 0
        self.static_inputs = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in example_inputs)
        cur = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            for _ in range(int(warmup)):
                fn(*self.static_inputs)
        cur.wait_stream(side)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_outputs = fn(*self.static_inputs)

    def __call__(self, *inputs: Any) -> Any:
        if not self.enabled:
            return self.fn(*inputs)
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"inputs: expected {len(self.static_inputs)} arguments (as captured), got {len(inputs)}")
        for i, (static, new) in enumerate(zip(self.static_inputs, inputs)):
            if isinstance(static, torch.Tensor):
                if not isinstance(new, torch.Tensor) or new.shape != static.shape or new.dtype != static.dtype:
                    got = f"{tuple(new.shape)} {new.dtype}" if isinstance(new, torch.Tensor) else type(new).__name__
                    raise ValueError(f"inputs[{i}]: expected a tensor of shape {tuple(static.shape)} and dtype {static.dtype} "
                                     f"(as captured), got {got}")
                static.copy_(new, non_blocking=True)
            elif new is not static and new != static:
                raise ValueError(f"inputs[{i}]: non-tensor arguments are baked into the graph; expected {static!r}, got {new!r}")
        self.graph.replay()
        if self.clone_outputs:
            return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, self.static_outputs)
        return self.static_outputs


class compile_with_fallback:  # noqa: N801 - used like a function
    """`fn` under torch.compile; if compiling fails (torch.compile is lazy: at the first call), warn once
    and run `fn` eagerly for this and every later call. Errors of later calls are not caught.

    kwargs go to compile_module (mode, fullgraph, dynamic, device); `backend` to torch.compile.
    """

    def __init__(self, fn: Callable, *, name: str, mode: str | None = "default", backend: str | None = None,
                 **kwargs: Any):
        self.fn, self.name = fn, name
        if backend is not None:
            self.compiled = torch.compile(fn, backend=backend, fullgraph=kwargs.get("fullgraph", False),
                                          dynamic=kwargs.get("dynamic", False))
        else:
            self.compiled = compile_module(fn, mode, **kwargs)
        self.failed: str | None = None
        self._checked = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return self.fn(*args, **kwargs)
        if self._checked:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure: dynamo, inductor, triton, C++ toolchain
            self.failed = f"{type(e).__name__}: {e}"
            warn_once(f"compile-fallback-{self.name}-{id(self)}", f"wmpo.accel: torch.compile of {self.name} failed "
                      f"({self.failed[:500]}); running it eagerly")
            return self.fn(*args, **kwargs)
        self._checked = True
        return out


class CompiledDenoiser:
    """A WorldModel whose denoiser step is compiled (with fallback): `forward_cached` (the cached step
    the rollout runs N times per chunk), `forward` (uncached step) and `build_context_cache`. One
    denoiser step is what gets compiled, not the chunk (which would unroll N steps x all blocks, plus
    the policy, VAE and reward model). Every other attribute is the wrapped model's."""

    def __init__(self, world_model: Any, *, mode: str | None = "default", backend: str | None = None):
        self.world_model = world_model
        kw = dict(mode=mode, backend=backend, dynamic=False)
        self.forward_cached = compile_with_fallback(world_model.forward_cached, name="world model forward_cached", **kw)
        self.build_context_cache = compile_with_fallback(world_model.build_context_cache,
                                                         name="world model build_context_cache", **kw)
        self._forward = compile_with_fallback(world_model.forward, name="world model forward", **kw)
        if hasattr(world_model, "forward_patches_cached"):  # the fused few-step path's denoiser step
            self.forward_patches_cached = compile_with_fallback(world_model.forward_patches_cached,
                                                                name="world model forward_patches_cached", **kw)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)

    @property
    def compile_failures(self) -> dict[str, str]:
        """{function: error} for each function that fell back to eager."""
        fns = {"forward_cached": self.forward_cached, "build_context_cache": self.build_context_cache,
               "forward": self._forward}
        if "forward_patches_cached" in self.__dict__:
            fns["forward_patches_cached"] = self.forward_patches_cached
        return {k: f.failed for k, f in fns.items() if f.failed is not None}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.world_model, name)

