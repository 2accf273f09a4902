"""What the first GPU machine would hit before any kernel runs (issue 18): the CMake logic (through a
real configure and `cmake -P` on the CUDA decision functions), CUDA launch geometry (compiled with
the host compiler), importing the kernels from a source checkout, and the test session's
TRITON_INTERPRET rule."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cmake() -> str | None:
    """The cmake the build uses (the venv's, from the cmake wheel scikit-build-core pulls), else PATH's;
    None when neither is >= 3.26 (CMakeLists.txt's minimum)."""
    for c in (shutil.which("cmake", path=str(Path(sys.executable).parent)), shutil.which("cmake")):
        if c:
            out = subprocess.run([c, "--version"], capture_output=True, text=True).stdout.split()
            ver = tuple(int(p) for p in out[2].split(".")[:2]) if len(out) > 2 else (0, 0)
            if ver >= (3, 26):
                return c
    return None


CMAKE = _cmake()
needs_cmake = pytest.mark.skipif(CMAKE is None, reason="cmake >= 3.26 is not installed")


def _cmake_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "check.cmake"
    script.write_text(f'include("{ROOT}/cmake/WmpoCuda.cmake")\n{body}\n')
    return subprocess.run([CMAKE, "-P", str(script)], capture_output=True, text=True, timeout=60)


@needs_cmake
@pytest.mark.parametrize("arch_list,want", [
    ("8.0;9.0", "80-real;90-real"),
    ("9.0+PTX", "90"),
    ("8.0 8.6 9.0a", "80-real;86-real;90a-real"),
])
def test_cuda_arch_list_to_cmake_architectures(tmp_path, arch_list, want):
    r = _cmake_script(tmp_path, f'wmpo_cuda_architectures(a "{arch_list}")\nmessage(STATUS "ARCHS=${{a}}")')
    assert r.returncode == 0, r.stderr
    assert f"ARCHS={want}" in r.stdout


@needs_cmake
def test_bad_arch_list_is_a_clear_error(tmp_path):
    r = _cmake_script(tmp_path, 'wmpo_cuda_architectures(a "sm_90")')
    assert r.returncode != 0 and "TORCH_CUDA_ARCH_LIST" in r.stderr and "sm_90" in r.stderr


@needs_cmake
@pytest.mark.parametrize("nvcc,torch_cuda,archs,ok,why", [
    ("12.4", "12.8", "80-real;90-real", "TRUE", "nvcc 12.4"),
    ("13.0", "12.8", "90-real", "FALSE", "major versions must match"),
    ("13.0", "13.0", "50-real;90-real", "FALSE", "sm_50 is not supported"),
    ("13.0", "13.0", "80-real;90-real", "TRUE", "architectures 80-real;90-real"),
    ("", "12.8", "90-real", "FALSE", "no working nvcc"),
    ("12.8", "", "90-real", "FALSE", "without CUDA"),
    ("11.7", "11.7", "80-real", "FALSE", ">= 11.8"),
])
def test_cuda_version_checks(tmp_path, nvcc, torch_cuda, archs, ok, why):
    r = _cmake_script(tmp_path, f'wmpo_cuda_check(ok why "{nvcc}" "{torch_cuda}" "{archs}")\n'
                                'message(STATUS "OK=${ok} WHY=${why}")')
    assert r.returncode == 0, r.stderr
    assert f"OK={ok} " in r.stdout and why in r.stdout, r.stdout


def _configure(tmp_path: Path, *defines: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST")}
    return subprocess.run([CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DPython_EXECUTABLE={sys.executable}",
                           *defines], capture_output=True, text=True, timeout=300, env=env)


@needs_cmake
def test_configure_cpu_only_when_torch_has_cuda_but_no_nvcc(tmp_path):
    """The first-contact failure: a CUDA torch, no nvcc. The configure must succeed and build the CPU
    extension, saying why the CUDA kernels are skipped."""
    r = _configure(tmp_path, "-DWMPO_TORCH_CUDA_VERSION=12.8", "-DWMPO_NVCC=/nonexistent/nvcc")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "building CUDA kernels=OFF" in r.stdout and "no working nvcc" in r.stdout
    assert "torch has CUDA 12.8 but the CUDA kernels are not built" in r.stderr
    # the same with WMPO_CUDA=ON is an error naming the reason, not a silent CPU-only build
    r2 = _configure(tmp_path, "-DWMPO_TORCH_CUDA_VERSION=12.8", "-DWMPO_NVCC=/nonexistent/nvcc", "-DWMPO_CUDA=ON")
    assert r2.returncode != 0 and "WMPO_CUDA=ON" in r2.stderr and "no working nvcc" in r2.stderr


def test_launch_geometry_respects_grid_limits(tmp_path):
    """csrc/launch_geometry.h (what csrc/cuda/*.cu launch with), compiled by the host compiler: the
    AdaLN parameter-gradient grid stays within gridDim.y <= 65535 and its frame loop covers every
    frame exactly once, well past 65,535 frames; the AdaLN forward's warp-per-row plan gives every row
    one warp and every pack a lane slot, and falls back to a block per row only for rows too long."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "geom.cpp"
    src.write_text(r'''
#include "launch_geometry.h"
#include <cstdio>
#include <vector>
int main() {
  using namespace wmpo;
  for (long long F : {1LL, 12LL, 65535LL, 65536LL, 200001LL}) {
    for (long long D : {72LL, 1152LL}) {
      Grid2 g = params_grid(D, F, kParamsThreads);
      if (g.y < 1 || g.y > kMaxGridY || g.x < 1 || g.x > kMaxGridX) { std::printf("bad grid %lld %lld\n", g.x, g.y); return 1; }
      if (g.x * kParamsThreads < D) { std::printf("columns not covered\n"); return 1; }
      std::vector<int> seen(F, 0);
      for (long long by = 0; by < g.y; ++by)              // blockIdx.y
        for (long long f = by; f < F; f += g.y) seen[f]++;  // the kernel's frame loop
      for (long long f = 0; f < F; ++f) if (seen[f] != 1) { std::printf("frame %lld seen %d\n", f, seen[f]); return 1; }
    }
  }
  // AdaLN forward rows: every row to exactly one warp (or block), every pack of a row to one lane slot
  for (long long R : {1LL, 7LL, 8LL, 9LL, 4096LL, 393217LL}) {
    for (long long D : {32LL, 72LL, 128LL, 1152LL, 2048LL, 4096LL, 8192LL}) {
      for (int full : {4, 8}) {
        for (int vec : {full, full / 2, 1}) {
          if (D % vec) continue;
          const RowPlan p = adaln_row_plan(R, D, vec, full);
          const long long packs = D / vec;
          if (p.blocks < 1 || p.blocks > kMaxGridX) return 1;
          if (p.warp_per_row) {
            if (vec != full || p.packs_per_lane < 1 || p.packs_per_lane > kMaxPacksPerLane) return 1;
            if ((p.packs_per_lane & (p.packs_per_lane - 1)) != 0) return 1;  // a compiled NPACK
            if (32LL * p.packs_per_lane < packs || (p.packs_per_lane > 1 && 16LL * p.packs_per_lane >= packs)) return 1;
            std::vector<int> seen(R, 0);
            for (long long b = 0; b < p.blocks; ++b)
              for (long long w = 0; w < kRowsPerBlock; ++w) if (b * kRowsPerBlock + w < R) seen[b * kRowsPerBlock + w]++;
            for (long long r = 0; r < R; ++r) if (seen[r] != 1) { std::printf("row %lld seen %d\n", r, seen[r]); return 1; }
          } else if (p.blocks != R || (vec == full && packs <= 32LL * kMaxPacksPerLane)) {
            std::printf("block plan R=%lld D=%lld vec=%d\n", R, D, vec); return 1;
          }
        }
      }
    }
  }
  // the paper model's rows (hidden 1152) take the warp kernel in bf16 and in fp32
  if (!adaln_row_plan(64, 1152, 8, 8).warp_per_row || !adaln_row_plan(64, 1152, 4, 4).warp_per_row) return 1;
  if (elementwise_grid(1, 256, 132) != 1 || elementwise_grid(1LL << 40, 256, 132) != 132 * 32) return 1;
  // 32-bit grid-stride indices: the loop variable (< n + one stride) must stay below 2^31
  const long long stride = elementwise_grid(1LL << 40, 256, 1024) * 256;
  if (!fits_int32(64LL * 12 * 4 * 32 * 32) || fits_int32((1LL << 31) - 1) || fits_int32((1LL << 31) - stride)) return 1;
  std::printf("ok\n");
  return 0;
}
''')
    exe = tmp_path / "geom"
    r = subprocess.run([cxx, "-std=c++17", "-O1", f"-I{ROOT / 'csrc'}", str(src), "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout


def test_source_checkout_imports_kernels_without_install():
    """`import wmpo.kernels` from a plain source checkout: no editable-install finder (python -S, so the
    venv's .pth files are not read), only the checkout and site-packages (for torch) on sys.path."""
    site = sysconfig.get_paths()["purelib"]
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {site!r}]\n"
            "import wmpo.kernels, wmpo.kernels._common as c, wmpo\n"
            "import wmpo.ops.dispatch as dispatch\n"
            "assert wmpo.kernels is sys.modules['wmpo.kernels']\n"
            "print(wmpo.kernels.__file__); print(c.__name__); print(dispatch.kernel('flow_step').__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split()
    assert Path(lines[0]) == ROOT / "kernels" / "__init__.py"
    assert lines[1:] == ["wmpo.kernels._common", "wmpo.kernels.flow_step"]


def test_triton_interpreter_only_without_a_gpu():
    """tests/conftest.py: the interpreter when no CUDA device is visible, compiled kernels otherwise."""
    import conftest

    assert conftest.triton_interpret_default(False) == "1"
    assert conftest.triton_interpret_default(True) is None
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"


@needs_cmake
def test_configure_finds_and_checks_a_real_nvcc(tmp_path):
    """With this machine's nvcc and a pretended CUDA torch of the same major version, the version and
    architecture checks pass; the CPU-only torch then lacks libc10_cuda, which is reported (CPU build)."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None or torch.version.cuda is not None:
        pytest.skip("needs nvcc and a CPU-only torch")
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    major = out.split("release ")[1].split(".")[0]
    r = _configure(tmp_path, f"-DWMPO_TORCH_CUDA_VERSION={major}.0", f"-DWMPO_NVCC={nvcc}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "libc10_cuda is missing" in r.stdout and "building CUDA kernels=OFF" in r.stdout


@pytest.mark.parametrize("cuda,preset,want", [(True, None, "None"), (False, None, "1"), (False, "0", "0")])
def test_conftest_sets_the_interpreter_only_without_a_gpu(cuda, preset, want):
    """Load tests/conftest.py in a fresh process where torch reports a GPU (or none): TRITON_INTERPRET
    is set only in the second case; an explicit value in the environment is kept."""
    code = ("import os, runpy, torch\n"
            f"torch.cuda.is_available = lambda: {cuda}\n"
            f"runpy.run_path({str(ROOT / 'tests' / 'conftest.py')!r})\n"
            "print(os.environ.get('TRITON_INTERPRET'))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if preset is not None:
        env["TRITON_INTERPRET"] = preset
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == want


@pytest.mark.slow
@pytest.mark.parametrize("source", ["adaln_modulate.cu", "gated_residual_adaln.cu"])
def test_adaln_cuda_kernels_compile_for_sm90_without_spills(tmp_path, source):
    """The AdaLN CUDA kernels (warp-per-row and block-per-row, every dtype pair and row length)
    compiled by this machine's nvcc for sm_90 against the CPU torch's headers: ptxas reports no spills
    and at most 255 registers. Compile only: nothing runs (no GPU here). The CPU torch lacks
    c10/cuda/impl/cuda_cmake_macros.h (a generated header of CUDA builds): a one-line stand-in."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None:
        pytest.skip("needs nvcc")
    stub = tmp_path / "inc" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    inc = Path(torch.__file__).parent / "include"
    r = subprocess.run([nvcc, "-std=c++20", "-arch=sm_90", f"-I{tmp_path / 'inc'}", f"-I{inc}",
                        f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{ROOT / 'csrc'}", "-c",
                        str(ROOT / "csrc" / "cuda" / source), "-o", str(tmp_path / "k.o"), "-Xptxas", "-v"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    import re

    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
    regs = [int(n) for n in re.findall(r"Used (\d+) registers", r.stderr)]
    assert spills and regs, r.stderr[-2000:]
    assert all(s == ("0", "0") for s in spills), spills
    assert max(regs) <= 255
    assert "adaln_fwd_warp_kernel" in r.stderr and "adaln_fwd_kernel" in r.stderr
