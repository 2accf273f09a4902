"""Inference engines for the rollout's VAE decoder and policy (see docs/accel.md).

- wmpo.accel.onnx_export: ONNX export + `OnnxEngine` (onnxruntime).
- wmpo.accel.compiled: `compile_module` (torch.compile modes) and `CUDAGraphRunner`.
- wmpo.accel.tensorrt: TensorRT from the ONNX file; optional and UNVERIFIED.

Submodules import lazily (onnxruntime / tensorrt are optional at import time).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "OnnxEngine": "onnx_export",
    "export_onnx": "onnx_export",
    "export_vae_decoder": "onnx_export",
    "export_policy_logits": "onnx_export",
    "compile_module": "compiled",
    "compile_with_fallback": "compiled",
    "CompiledDenoiser": "compiled",
    "CUDAGraphRunner": "compiled",
    "tensorrt_available": "tensorrt",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"wmpo.accel.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wmpo.accel' has no attribute {name!r}")
