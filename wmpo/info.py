"""`python -m wmpo.info` / `wmpo.show_config()`: what this install is and what it can run.

Version (installed distribution), the torch and CUDA the extension was built with (wmpo._build_info)
and the ones running now, whether wmpo._C loaded (and why not), Triton, the device, and for every
op the backends usable here with the reason for each one that is not, plus what `auto` picks on
CPU and CUDA tensors. `--json` prints the same as one JSON object.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys

import torch

from wmpo.build_info import built_with, torch_mismatch
from wmpo.ops import dispatch

# op -> backends that have a kernel for it ("ref" always exists)
KERNELS = {
    "adaln_modulate": ("cpp", "cuda", "triton"),
    "gated_residual_adaln": ("cpp", "cuda", "triton"),
    "noisy_context": ("cpp", "cuda", "triton"),
    "flow_step": ("cpp", "cuda", "triton"),
    "flow_step_patchify": ("cpp", "cuda", "triton"),
    "action_logprob": ("cpp", "cuda", "triton"),
    "frame_causal_attention": ("triton",),
    "modulate": (),
    "gated_residual": (),
}
NOTES = {
    "frame_causal_attention": "ref is torch's scaled_dot_product_attention (the CPU path by design)",
    "modulate": "one torch.addcmul pass (no custom kernel needed)",
    "gated_residual": "one torch.addcmul pass (no custom kernel needed)",
}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _backend_status(op: str, cuda_device: bool) -> dict[str, str]:
    """backend -> 'yes' or 'no: why'."""
    built = built_with() or {}
    triton_ok = importlib.util.find_spec("triton") is not None
    out = {}
    for be in ("cpp", "cuda", "triton"):
        if be not in KERNELS[op]:
            out[be] = f"no: no {be} kernel for this op"
        elif be == "cpp":
            out[be] = "yes (CPU tensors)" if dispatch.HAS_EXTENSION else f"no: wmpo._C not loaded ({dispatch._EXTENSION_ERROR})"
        elif be == "cuda":
            if not dispatch.HAS_EXTENSION:
                out[be] = f"no: wmpo._C not loaded ({dispatch._EXTENSION_ERROR})"
            elif not dispatch.extension_has_cuda():
                out[be] = f"no: wmpo._C built without CUDA kernels ({built.get('CUDA_NOTE') or 'CPU torch'})"
            elif not cuda_device:
                out[be] = "no: no CUDA device"
            else:
                out[be] = "yes (CUDA tensors)"
        else:
            if not triton_ok:
                out[be] = "no: triton is not installed (pip install triton, or wmpo[full])"
            elif cuda_device:
                out[be] = "yes (CUDA tensors)" + ("; CPU tensors in the interpreter" if dispatch.triton_interpreting() else "")
            elif dispatch.triton_interpreting():
                out[be] = "yes (CPU tensors, interpreter: TRITON_INTERPRET=1, slow)"
            else:
                out[be] = "no: no CUDA device (CPU tensors need TRITON_INTERPRET=1)"
    out["ref"] = "yes"
    return out


def _auto(op: str, device: str, status: dict[str, str]) -> str:
    if not KERNELS[op]:
        return "torch.addcmul"
    for be in (("triton", "cuda") if device == "cuda" else ("cpp",)):
        if status[be].startswith("yes"):
            return be
    return "ref"


def config() -> dict:
    """Everything `show_config` prints, as a dict."""
    cuda_device = torch.cuda.is_available()
    built = built_with()
    device = {"type": "cuda" if cuda_device else "cpu", "cpu_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine()}
    if cuda_device:
        p = torch.cuda.get_device_properties(0)
        device.update(name=p.name, capability=f"sm_{p.major}{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                      count=torch.cuda.device_count())
    ops_ = {}
    for op in KERNELS:
        status = _backend_status(op, cuda_device)
        ops_[op] = {"backends": status, "auto_cpu": _auto(op, "cpu", status),
                    "auto_cuda": _auto(op, "cuda", status) if cuda_device else None, "note": NOTES.get(op, "")}
    return {
        "wmpo": {"version": _version("wmpo") or sys.modules["wmpo"].__version__,
                 "location": os.path.dirname(os.path.abspath(__file__))},
        "built_with": built or {"note": "not built (a source checkout without pip install): no wmpo._build_info"},
        "running": {"torch": torch.__version__, "torch_cuda": torch.version.cuda or "", "python": platform.python_version(),
                    "numpy": _version("numpy"), "triton": _version("triton") or "not installed",
                    "cudnn": torch.backends.cudnn.version() if cuda_device else None},
        "torch_mismatch": torch_mismatch(),
        "extension": {"loaded": dispatch.HAS_EXTENSION, "why_not": dispatch._EXTENSION_ERROR,
                      "cuda_kernels": dispatch.extension_has_cuda()},
        "env": {k: os.environ[k] for k in ("WMPO_BACKEND", "WMPO_STRICT", "TRITON_INTERPRET") if k in os.environ},
        "device": device,
        "ops": ops_,
    }


def show_config(file=None) -> None:
    """Print `config()` for people."""
    c = config()
    out = file or sys.stdout
    b, r = c["built_with"], c["running"]
    w = lambda s="": print(s, file=out)  # noqa: E731
    w(f"wmpo {c['wmpo']['version']}  ({c['wmpo']['location']})")
    if "TORCH_VERSION" in b:
        cuda = (f"CUDA kernels for {b['CUDA_ARCHITECTURES']} (nvcc {b['NVCC_VERSION']})" if b["WITH_CUDA"]
                else f"no CUDA kernels ({b['CUDA_NOTE'] or 'CPU torch'})")
        w(f"built with:  torch {b['TORCH_VERSION']} (CUDA {b['TORCH_CUDA_VERSION'] or 'none'}), {cuda}, "
          f"C++ ABI {b['CXX11_ABI']}, {b['COMPILER']}")
    else:
        w(f"built with:  {b['note']}")
    w(f"running:     torch {r['torch']} (CUDA {r['torch_cuda'] or 'none'}), python {r['python']}, "
      f"numpy {r['numpy']}, triton {r['triton']}")
    if c["torch_mismatch"]:
        w(f"MISMATCH:    {c['torch_mismatch']}")
    e = c["extension"]
    w("extension:   wmpo._C " + ("loaded" + (" with CUDA kernels" if e["cuda_kernels"] else " (CPU kernels)")
                                 if e["loaded"] else f"NOT loaded: {e['why_not']}"))
    d = c["device"]
    w("device:      " + (f"cuda: {d['name']} ({d['capability']}, {d['memory_gib']} GiB) x{d['count']}"
                         if d["type"] == "cuda" else f"cpu ({d['cpu']}, {d['cpu_threads']} threads; no CUDA device)"))
    if c["env"]:
        w("environment: " + " ".join(f"{k}={v}" for k, v in c["env"].items()))
    w()
    w("backends per op (auto = what a call without backend= runs):")
    for op, info in c["ops"].items():
        auto = f"auto: cpu -> {info['auto_cpu']}" + (f", cuda -> {info['auto_cuda']}" if info["auto_cuda"] else "")
        w(f"  {op}  [{auto}]" + (f"  ({info['note']})" if info["note"] else ""))
        for be, st in info["backends"].items():
            if be != "ref":
                w(f"      {be:<7}{st}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wmpo.info", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps(config(), indent=2, default=str))
    else:
        show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
