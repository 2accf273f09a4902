"""TensorRT engines built from wmpo's ONNX exports. UNVERIFIED.

UNVERIFIED: TensorRT cannot be installed on the machines this project is developed and tested on,
so this module has never been run. It follows the TensorRT 10 Python API (explicit batch,
`build_serialized_network`, named I/O tensors, `execute_async_v3`). Treat it as a starting point;
the verified engines are wmpo.accel.onnx_export.OnnxEngine and wmpo.accel.compiled.

    build_engine("vae_dec.onnx", "vae_dec.plan", max_batch=64)   # bf16 (fp16 can overflow in the VAE)
    dec = TensorRTEngine("vae_dec.plan")
    frames = dec(latents)          # CUDA torch tensors in and out
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def tensorrt_available() -> bool:
    """True when the `tensorrt` package imports and a CUDA device is present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError("wmpo.accel.tensorrt needs the `tensorrt` package (and a CUDA device); "
                           "it is optional and not installed here. Use wmpo.accel.OnnxEngine or compile_module instead.") from e
    return trt


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 64,
    fp16: bool = False,
    bf16: bool = True,
    workspace_gb: float = 4.0,
) -> Path:
    """UNVERIFIED. Parse `onnx_path`, build a serialized engine with a batch profile, write `engine_path`.

    Precision: bf16 by default (fp32 with bf16=False). fp16 is off by default: the VAE decoder's
    activations overflow fp16's range; enable it only for models known to fit it."""
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"min_batch/max_batch: expected 1 <= min_batch <= max_batch, got {min_batch}, {max_batch}")
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"opt_batch: expected in [{min_batch}, {max_batch}], got {opt_batch}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ValueError(f"onnx_path: expected an existing ONNX file, got {str(onnx_path)!r}")
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if bf16:
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = list(inp.shape)
        if any(d < 0 for d in shape[1:]):
            raise RuntimeError(f"input {inp.name}: only the batch axis may be dynamic, got {shape}")
        profile.set_shape(inp.name, [min_batch, *shape[1:]], [opt_batch, *shape[1:]], [max_batch, *shape[1:]])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_suffix(engine_path.suffix + ".tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    return engine_path


class TensorRTEngine:
    """UNVERIFIED. Run a serialized TensorRT engine on CUDA torch tensors (inputs in ONNX input order)."""

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda"):
        trt = _trt()
        self._trt = trt
        self.device = torch.device(device)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt = self._trt
        return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                trt.int64: torch.int64, trt.int32: torch.int32, trt.bool: torch.bool}[self.engine.get_tensor_dtype(name)]

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"inputs: expected {len(self.input_names)} tensors ({self.input_names}), got {len(inputs)}")
        keep = []
        for name, t in zip(self.input_names, inputs):
            t = t.to(self.device, self._torch_dtype(name)).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.output_names:
            o = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtype(name), device=self.device)
            outs.append(o)
            self.context.set_tensor_address(name, o.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outs[0] if len(outs) == 1 else tuple(outs)
