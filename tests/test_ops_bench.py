"""The benchmarks' own computations (issue 18, item 10) and the dry run of bench/gpu_check.sh (the
prepared device check: same script paths, tiny shapes, on the CPU)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flow_step_error_is_measured_on_separate_outputs():
    """bench_ops used to report flow_step's error as 0 whatever the kernel did: both sides updated the
    same tensor in place. op_errors resets the input and copies each output."""
    import wmpo.ops as ops

    bench_ops = _load("bench_ops")
    case = next(c for c in bench_ops.cases("cpu", True, torch.float32, [1]) if c[0] == "flow_step")
    impls = case[3]
    xs = impls["ref"]()  # the tensor both sides update
    impls["reset"]()
    initial = xs.clone()
    correct = lambda: impls["fused"](be="ref")  # noqa: E731
    errs = bench_ops.op_errors(impls, {"right": correct})
    assert errs["right"] == 0.0
    # a kernel with a wrong step size must show an error (with aliasing it showed 0)
    nz = torch.randn_like(xs)
    wrong = lambda: ops.flow_step_ref(xs, nz, 1.0, 0.5, num_context=1)  # noqa: E731
    assert bench_ops.op_errors(impls, {"wrong": wrong})["wrong"] > 1e-3
    assert torch.equal(xs, initial)  # the input is restored afterwards (the timing loop starts from it)


def test_attention_check_rows_cover_first_last_and_random():
    bench_attention = _load("bench_attention")
    rows = bench_attention.check_rows(16384, 64, seed=0)
    assert len(rows) == 64 and len(set(rows.tolist())) == 64 and rows.tolist() == sorted(rows.tolist())
    assert rows[0] == 0 and rows[-1] == 16383 and {0, 15, 16368, 16383} <= set(rows.tolist())
    middle = [r for r in rows.tolist() if 16 <= r < 16368]
    assert len(middle) == 32 and max(middle) > 1000  # spread over the rows, not a prefix
    assert bench_attention.check_rows(10, 64).tolist() == list(range(10))
    # the GPU sweep has none of the spilling settings (1 warp, 8-16 rows per program)
    assert 1 not in bench_attention.SWEEP_WARPS and max(bench_attention.SWEEP_BLOCK_R) <= 4


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("Some Future GPU", None),
])
def test_bf16_peak_by_device_name(name, peak):
    from bench.common import bf16_peak_flops

    assert bf16_peak_flops(name) == peak
    assert _load("bench_attention").bf16_peak(name) == (None if peak is None else peak / 1e12)


def test_gpu_check_error_rule():
    from bench.gpu_check_ops import compare, row_errors, tolerance

    want = torch.linspace(-2, 2, 1000, dtype=torch.float64).view(100, 10)
    eager = want.to(torch.bfloat16)
    assert tolerance(want, eager, torch.bfloat16) >= 2 * (eager.double() - want).abs().max().item()
    assert compare(eager, want, eager)["ok"]
    bad = eager.clone()
    bad[-1, -1] += 0.5  # one wrong element in the last row
    res = compare(bad, want, eager)
    assert not res["ok"] and res["outputs"][0]["err_rows"]["last"] > 0.4
    assert row_errors(bad, want, n=10)["first"] < 0.1
    nan = eager.clone()
    nan[3, 3] = float("nan")
    assert not compare(nan, want, eager)["ok"]


def test_gpu_check_dry_run(tmp_path):
    """bench/gpu_check.sh --dry-run: every step of both parts on the CPU with tiny shapes, JSON written."""
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_PART_LIMIT_S": "600"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    summary = json.loads(next(tmp_path.glob("gpu_check-summary-cpu-dryrun-*.json")).read_text())
    assert summary["ok"] and summary["dry_run"]
    assert [s["step"] for s in summary["steps"]] == ["build", "ops", "pytest_gpu", "model"]
    p1 = json.loads(next(tmp_path.glob("gpu_check-part1-cpu-dryrun-*.json")).read_text())
    ops_checked = {(c["op"], c["backend"]) for c in p1["ops"]}
    for op in ("adaln_modulate", "gated_residual_adaln", "noisy_context", "flow_step", "action_logprob",
               "frame_causal_attention"):
        assert (op, "triton") in ops_checked
    assert all(c["ok"] and c["forward"]["GBps"] > 0 for c in p1["ops"])
    assert all("backward" in c for c in p1["ops"] if c["op"] in ("adaln_modulate", "action_logprob"))
    assert any("fp32+bf16" in c["shape"] for c in p1["ops"])  # the mixed-dtype fusion is checked too
    assert p1["compile"]["ok"] and p1["graph_chunk"]["ok"] and p1["graph_chunk"]["graph_captured"] is False
    p2 = json.loads(next(tmp_path.glob("gpu_check-part2-cpu-dryrun-*.json")).read_text())
    modes = p2["denoiser"][0]["modes"]
    assert set(modes) == {"uncached_ref", "uncached_fused", "cached_ref", "cached_fused"}
    assert all(m["ms_per_step"] > 0 for m in modes.values())
    assert p2["memory_plan"] and "bytes_per_frame" in p2["vae_decode"]
