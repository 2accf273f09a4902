"""What every benchmark script records next to its numbers: device, peak rate, git SHA."""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

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


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known CUDA device, else None (no MFU on CPU)."""
    if device.type != "cuda":
        return None
    return bf16_peak_flops(torch.cuda.get_device_name(device))


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def preset_config(name: str):
    """The pipeline preset `name` of wmpo.config (micro | tiny | cpu | small | paper): the benchmarks
    build their models from the same configs the pipeline trains (a run's RunConfig)."""
    from wmpo.config import get_preset

    return get_preset(name)


def preset_names() -> list[str]:
    from wmpo.config import PRESETS

    return sorted(PRESETS)


def result_header(bench: str, device: torch.device) -> dict:
    """What every result file starts with: the benchmark, device, git SHA, UTC date and versions."""
    import datetime as _dt

    return {"bench": bench, "device": device_name(device), "git_sha": git_sha(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}}


def write_result(out_dir: str | Path, stem: str, result: dict) -> Path:
    """Write `result` as out_dir/<stem>-<UTC stamp>.json; -> the path (printed)."""
    import datetime as _dt
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{stem}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


def time_ms(fn, device: torch.device, iters: int, warmup: int) -> list[float]:
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
