"""What every benchmark records next to its numbers, and how it times: repeat statistics (median and
spread), device and peak rate, git SHA, threads, the backend each fused op runs with, one result header.

Shared by `wmpo bench` (wmpo.bench.run) and the scripts in bench/ (bench/common.py re-exports these)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch

# dense bf16 peak FLOP/s by device-name substring (no sparsity), most specific first: an H100 PCIe
# (756) or NVL (835) must not match the SXM entry (989) that the plain "H100" names.
PEAK_BF16 = (
    ("H200", 989e12), ("GH200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("H800 PCIe", 756e12), ("H800", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12), ("4090", 165e12),
)


def bf16_peak_flops(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device by its name (torch.cuda.get_device_name), None if unknown."""
    return next((v for k, v in PEAK_BF16 if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, peak_tflops: float | None = None) -> float | None:
    """peak_tflops (given by the user) in FLOP/s, else the dense bf16 peak of a known CUDA device, else None
    (no MFU: a CPU has no table entry; pass --peak-tflops)."""
    if peak_tflops is not None:
        return float(peak_tflops) * 1e12
    if device.type != "cuda":
        return None
    return bf16_peak_flops(torch.cuda.get_device_name(device))


def git_sha(where: str | Path | None = None) -> str | None:
    """HEAD of the git checkout holding `where` (default: this package), None outside one (an installed wheel)."""
    cwd = Path(where) if where is not None else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=cwd, text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "wmpo", "csrc", "kernels"], cwd=cwd,
                               stderr=subprocess.DEVNULL).returncode
        return out + ("+dirty" if dirty == 1 else "")
    except Exception:  # noqa: BLE001 - no git, not a checkout
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def backends(device: torch.device) -> dict[str, str]:
    """op -> the backend a call on `device` runs with now (WMPO_BACKEND and the build included)."""
    from wmpo.info import KERNELS
    from wmpo.ops import dispatch

    want = dispatch.requested_backend()
    out = {}
    for op, kernels in KERNELS.items():
        if not kernels:
            out[op] = "torch.addcmul"
            continue
        be = dispatch.resolve_backend(device)
        out[op] = be if (be == "ref" or be in kernels or want == "ref") else "ref"
    return out


def result_header(bench: str, device: torch.device, command: str | None = None) -> dict:
    """What every result file starts with: the benchmark, device, threads, git SHA, UTC date, versions."""
    return {"bench": bench, "device": device_name(device), "threads": torch.get_num_threads(), "git_sha": git_sha() or "unknown",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
            "versions": {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda},
            "env": {k: os.environ[k] for k in ("WMPO_BACKEND", "OMP_NUM_THREADS", "TRITON_INTERPRET") if k in os.environ}}


def write_result(out_dir: str | Path, stem: str, result: dict) -> Path:
    """Write `result` as out_dir/<stem>-<UTC stamp>.json; -> the path (printed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{stem}-{stamp}.json"
    write_json(path, result)
    print(f"wrote {path}")
    return path


def write_json(path: str | Path, result: dict) -> Path:
    """Atomically write `result` as JSON to `path` (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max, interquartile range (IQR; 0 for fewer than 2 values) and the values themselves."""
    if not values:
        raise ValueError("values: expected at least one measurement")
    v = sorted(float(x) for x in values)
    if len(v) >= 2:
        q = statistics.quantiles(v, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "iqr": iqr, "n": len(v), "values": list(map(float, values))}


def time_ms(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> list[float]:
    """`iters` timings of fn in ms after `warmup` calls: CUDA events on the GPU, wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def wall_s(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one call, synchronized at both ends."""
    sync(device)
    t0 = time.perf_counter()
    res = fn()
    sync(device)
    return time.perf_counter() - t0, res


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of fn (torch.utils.flop_counter: matmuls, convolutions, attention; custom
    Triton / C++ ops are not counted, so it is a slight underestimate)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())
