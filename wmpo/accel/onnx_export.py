"""ONNX export of the VAE decoder and the policy's action-logits forward, and an onnxruntime engine.

    export_vae_decoder(vae, "vae_dec.onnx", torch.randn(1, 4, 32, 32))
    export_policy_logits(policy, "policy.onnx", frames, instr)
    dec = OnnxEngine("vae_dec.onnx")            # CPU provider; CUDA provider when installed
    frames = dec(latents)                        # torch in, torch out (any batch size)

Export uses torch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): the
dynamo exporter needs `onnxscript`, which is not a dependency. Axis 0 of every input and output
is dynamic ("batch").
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from wmpo.utils.checks import check_tensor
from wmpo.utils.logging import warn_once

MIN_OPSET = 17
DEFAULT_OPSET = 17


class VAEDecoderForExport(nn.Module):
    """latents [B, C, h, w] -> frames [B, 3, H, W]: `vae.decode(latents / scaling_factor)`.

    Works with diffusers.AutoencoderKL (`.decode(z).sample`) and with any module whose `decode`
    returns a tensor, a tuple (first item) or an object with `.sample`.
    """

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None):
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents if self.scaling_factor is None else latents / self.scaling_factor
        out = self.vae.decode(z)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out


class PolicyLogitsForExport(nn.Module):
    """(frames [N, 3, H, W], instr int64 [N, L]) -> logits [N, K, D, bins] via `policy.action_logits`."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, frames: torch.Tensor, instr: torch.Tensor) -> torch.Tensor:
        return self.policy.action_logits(frames, instr)


def export_onnx(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    check: bool = True,
) -> Path:
    """Export `module(*example_inputs)` (in eval mode, on the CPU, fp32) to `path`; returns the path.

    The module is exported as is: call it on CPU fp32 copies if it lives elsewhere.
    """
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset: expected an int >= {MIN_OPSET}, got {opset!r}")
    if len(input_names) != len(example_inputs):
        raise ValueError(f"input_names: expected {len(example_inputs)} names (one per example input), got {list(input_names)}")
    for name, t in zip(input_names, example_inputs):
        check_tensor(name, t)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn = {n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python branches
            torch.onnx.export(
                module,
                tuple(example_inputs),
                str(path),
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dyn,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    if check:
        import onnx

        onnx.checker.check_model(str(path))
    return path


def export_vae_decoder(
    vae: nn.Module,
    path: str | os.PathLike,
    example_latents: torch.Tensor,
    *,
    scaling_factor: float | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export the VAE decoder: input "latents" [B, C, h, w] -> output "frames" [B, 3, H, W]."""
    check_tensor("example_latents", example_latents, ndim=4, floating=True)
    return export_onnx(VAEDecoderForExport(vae, scaling_factor), (example_latents,), path,
                       input_names=["latents"], output_names=["frames"], opset=opset)


def export_policy_logits(
    policy: nn.Module,
    path: str | os.PathLike,
    example_frames: torch.Tensor,
    example_instr: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export `policy.action_logits`: inputs "frames" [N, 3, S, S], "instr" int64 [N, L] -> "logits".

    The policy's own on-device resize (antialiased bilinear: no ONNX equivalent in the exporter)
    stays outside the graph: when the policy has `preprocess` (VLAPolicy), the example frames are
    passed through it first, so the graph takes frames already at the policy's image size. Feed the
    engine `policy.preprocess(frames)` (a no-op for frames of that size).
    """
    check_tensor("example_frames", example_frames, ndim=4, floating=True)
    if hasattr(policy, "preprocess"):
        with torch.no_grad():
            example_frames = policy.preprocess(example_frames).float()
    check_tensor("example_instr", example_instr, ndim=2, dtype=torch.int64)
    if example_frames.shape[0] != example_instr.shape[0]:
        raise ValueError(f"example_instr: expected batch {example_frames.shape[0]} (as example_frames), got {example_instr.shape[0]}")
    return export_onnx(PolicyLogitsForExport(policy), (example_frames, example_instr), path,
                       input_names=["frames", "instr"], output_names=["logits"], opset=opset)


_NP_TO_TORCH = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
    "tensor(uint8)": torch.uint8,
}


class OnnxEngine:
    """Runs an exported ONNX model with onnxruntime; torch tensors in and out.

    device "cpu": CPUExecutionProvider, inputs copied through numpy. device "cuda": the
    CUDAExecutionProvider (needs onnxruntime-gpu) with I/O binding straight on torch's device
    memory; UNVERIFIED here (no onnxruntime-gpu on the development machines). Falls back to the
    CPU provider, with a one-time warning, when the CUDA provider is missing.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", *, intra_op_threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"path: expected an existing ONNX file, got {str(self.path)!r}")
        self.device = torch.device(device)
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
            else:
                warn_once("onnx-no-cuda-provider", "wmpo.accel.OnnxEngine: onnxruntime has no CUDAExecutionProvider "
                          "(install onnxruntime-gpu); running on the CPU provider with host copies")
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        self.on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        self.inputs = self.session.get_inputs()
        self.outputs = self.session.get_outputs()
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.outputs]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _check(self, args: Sequence[torch.Tensor]) -> None:
        if len(args) != len(self.inputs):
            raise ValueError(f"inputs: expected {len(self.inputs)} tensors ({self.input_names}), got {len(args)}")
        for meta, t in zip(self.inputs, args):
            want = _NP_TO_TORCH.get(meta.type)
            check_tensor(meta.name, t, ndim=len(meta.shape), dtype=want)
            fixed = [d if isinstance(d, int) else None for d in meta.shape]
            check_tensor(meta.name, t, shape=fixed)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the model; returns one tensor, or a tuple when the model has several outputs."""
        self._check(args)
        outs = self._run_gpu(args) if self.on_gpu else self._run_cpu(args)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _run_cpu(self, args):
        feed = {m.name: t.detach().cpu().contiguous().numpy() for m, t in zip(self.inputs, args)}
        res = self.session.run(self.output_names, feed)
        return [torch.from_numpy(r).to(self.device) for r in res]

    def _run_gpu(self, args):  # pragma: no cover - needs onnxruntime-gpu and a CUDA device
        import numpy as np

        binding = self.session.io_binding()
        keep = []
        for meta, t in zip(self.inputs, args):
            t = t.detach().to(self.device).contiguous()
            keep.append(t)
            binding.bind_input(meta.name, "cuda", self.device.index or 0, _torch_to_np_dtype(t.dtype), list(t.shape), t.data_ptr())
        # outputs straight into torch tensors on the device (no device -> host -> device copy) when
        # their shapes are known: static, or a dynamic leading batch axis equal to the inputs'
        batch = int(args[0].shape[0]) if args and args[0].dim() else None
        preset = []
        for meta in self.outputs:
            shape = [batch if (i == 0 and not isinstance(d, int)) else d for i, d in enumerate(meta.shape)]
            dtype = _ORT_TO_TORCH.get(getattr(meta, "type", ""))
            if dtype is None or any(not isinstance(d, int) for d in shape):
                preset = None
                break
            preset.append(torch.empty(shape, dtype=dtype, device=self.device))
        idx = self.device.index or 0
        if preset is not None:
            for meta, out in zip(self.outputs, preset):
                binding.bind_output(meta.name, "cuda", idx, _torch_to_np_dtype(out.dtype), list(out.shape), out.data_ptr())
        else:
            for meta in self.outputs:
                binding.bind_output(meta.name, "cuda", idx)
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        if preset is not None:
            return preset
        outs = []
        for val in binding.get_outputs():
            arr = val.numpy()  # device -> host copy: output shape unknown before the run
            outs.append(torch.from_numpy(np.ascontiguousarray(arr)).to(self.device))
        return outs


_ORT_TO_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
                 "tensor(int64)": torch.int64, "tensor(int32)": torch.int32, "tensor(bool)": torch.bool,
                 "tensor(uint8)": torch.uint8}


def _torch_to_np_dtype(dtype: torch.dtype):
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
            torch.int64: np.int64, torch.int32: np.int32, torch.bool: np.bool_, torch.uint8: np.uint8}[dtype]
