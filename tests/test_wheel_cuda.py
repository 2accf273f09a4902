"""The CUDA wheel (`make wheel-cuda`, docs/install.md), checked without a GPU: its name and metadata
name the CUDA torch it was built against, its build record says CUDA kernels and architectures,
`wmpo._C` holds a cubin of every CUDA kernel for every requested architecture (and no PTX), it links
torch's CUDA libraries (not a cudart of its own), and it imports under a CUDA torch on a machine
without a GPU (CPU ops through wmpo._C) and is refused under a CPU torch. Nothing here runs a CUDA
kernel: that needs a GPU.

Slow: the wheel is read from WMPO_CUDA_WHEEL, else built with `make wheel-cuda` (installs PyPI's
CUDA torch, ~4.7 GB, into .venv-cu and compiles for several minutes). The import under a CUDA torch
uses WMPO_CUDA_PYTHON (default .venv-cu/bin/python; skipped when missing). Needs cuobjdump: the CUDA
toolkit's (CUDA_HOME, /usr/local/cuda, PATH), else the one Triton's wheel ships.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the build in `wheel` alone takes 5-10 min here

ROOT = Path(__file__).resolve().parents[1]
ARCHS = os.environ.get("WMPO_CUDA_ARCHS", "8.0;9.0")  # the TORCH_CUDA_ARCH_LIST the wheel was built with


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _tool(name: str) -> str:
    """A CUDA binary tool: the toolkit's (CUDA_HOME, /usr/local/cuda, PATH), else the copy Triton ships."""
    import importlib.util

    dirs = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for d in dirs:
        if d and (Path(d) / "bin" / name).exists():
            return str(Path(d) / "bin" / name)
    found = shutil.which(name)
    triton = importlib.util.find_spec("triton")
    if found is None and triton is not None and triton.origin:
        bundled = Path(triton.origin).parent / "backends" / "nvidia" / "bin" / name
        found = str(bundled) if bundled.exists() else None
    if found is None:
        pytest.skip(f"needs {name} (the CUDA toolkit, or Triton's copy)")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("WMPO_CUDA_WHEEL")
    if given:
        return Path(given)
    build = tmp_path_factory.mktemp("wheel-cuda")
    _run(["make", "-C", str(ROOT), "wheel-cuda", f"CU_BUILD={build}", f"CU_ARCHS={ARCHS}"], timeout=7200)
    (found,) = (build / "repaired").glob("wmpo-*.whl")
    return found


@pytest.fixture(scope="module")
def record(wheel) -> dict:
    """wmpo/_build_info.py of the wheel, executed."""
    ns: dict = {}
    exec(zipfile.ZipFile(wheel).read("wmpo/_build_info.py").decode(), ns)
    return {k: v for k, v in ns.items() if k.isupper()}


@pytest.fixture(scope="module")
def extension(wheel, tmp_path_factory) -> Path:
    zf = zipfile.ZipFile(wheel)
    (name,) = [n for n in zf.namelist() if re.fullmatch(r"wmpo/_C\..*\.so", n)]
    out = tmp_path_factory.mktemp("ext") / Path(name).name
    out.write_bytes(zf.read(name))
    return out


def _only(python: str, site: Path, code: str) -> list[str]:
    """`python -S -c code` with the wheel's install (site) and the venv's site-packages (torch) on
    sys.path, and no .pth files, so no editable wmpo install of that venv shadows the wheel."""
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    return [python, "-S", "-c", f"import sys; sys.path[:0] = [{str(site)!r}, {purelib!r}]\n" + code]


def _sm(arch: str) -> str:
    """'9.0' -> 'sm_90'."""
    return "sm_" + arch.replace(".", "")


def test_name_version_and_requirement_name_the_cuda_torch(wheel, record):
    assert record["TORCH_CUDA_VERSION"], record
    major, minor = record["TORCH_VERSION"].split(".")[:2]
    local = f"pt{major}{minor}cu{record['TORCH_CUDA_VERSION'].replace('.', '')}"
    m = re.fullmatch(r"wmpo-(?P<version>[^-]+)-(?P<py>cp\d+)-(?P<abi>cp\d+)-(?P<plat>[\w.]+)\.whl", wheel.name)
    assert m, wheel.name
    assert m["version"].endswith(f"+{local}") and m["version"] == record["WMPO_VERSION"], (m["version"], record)
    assert m["plat"].startswith("manylinux_") and m["plat"].endswith("_x86_64"), m["plat"]
    zf = zipfile.ZipFile(wheel)
    meta = zf.read(f"wmpo-{m['version']}.dist-info/METADATA").decode()
    assert f"Version: {m['version']}\n" in meta
    assert re.findall(r"^Requires-Dist: torch.*$", meta, re.M) == [f"Requires-Dist: torch=={major}.{minor}.*"]
    tags = zf.read(f"wmpo-{m['version']}.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in tags
    assert f"Tag: {m['py']}-{m['abi']}-{m['plat']}" in tags.splitlines(), tags


def test_build_record_says_cuda_kernels_and_architectures(record):
    assert record["WITH_CUDA"] is True, record
    want = ",".join(_sm(a)[3:] + "-real" for a in ARCHS.split(";"))
    assert record["CUDA_ARCHITECTURES"] == want, record
    assert record["NVCC_VERSION"].split(".")[0] == record["TORCH_CUDA_VERSION"].split(".")[0], record
    assert record["CXX11_ABI"] == 1


def test_every_cuda_kernel_has_a_cubin_for_every_architecture(extension):
    """cuobjdump: one ELF (SASS) per requested architecture and no PTX (architectures are '-real');
    every __global__ function of csrc/cuda is in each of them."""
    cuobjdump = _tool("cuobjdump")
    elves = _run([cuobjdump, "--list-elf", str(extension)]).stdout
    archs = sorted(set(re.findall(r"\.(sm_\d+a?)\.cubin", elves)))
    assert archs == sorted(_sm(a) for a in ARCHS.split(";")), elves
    assert "PTX file" not in _run([cuobjdump, "--list-ptx", str(extension)]).stdout
    src = "".join(p.read_text() for p in sorted((ROOT / "csrc" / "cuda").glob("*.cu*")))
    kernels = set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", src))
    assert len(kernels) >= 6, kernels  # the regex still finds the kernels
    usage = _run([cuobjdump, "--dump-resource-usage", str(extension)]).stdout
    functions = []  # (arch, mangled name)
    arch = None
    for line in usage.splitlines():
        m = re.search(r"arch = (sm_\d+a?)", line)
        if m:
            arch = m[1]
        m = re.match(r"\s*Function (\S+):", line)
        if m and arch:
            functions.append((arch, m[1]))
    demangled = _run(["c++filt"], input="\n".join(f for _, f in functions) + "\n").stdout.splitlines()
    per_arch = {a: set() for a in archs}
    for (a, _), name in zip(functions, demangled):
        per_arch[a].update(k for k in kernels if re.search(rf"\b{k}\b", name))
    for a in archs:
        assert per_arch[a] == kernels, (a, kernels - per_arch[a])


def test_links_torch_cuda_libraries_and_no_cudart_of_its_own(wheel, extension):
    """cudart is static (CMAKE_CUDA_RUNTIME_LIBRARY Static); libc10_cuda (and libtorch_cuda, when the
    linker keeps it) come from the torch requirement (excluded from the repair, found through the
    rpath); nothing is grafted into the wheel."""
    dyn = _run(["readelf", "-d", str(extension)]).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", dyn)
    assert "libc10_cuda.so" in needed, needed
    torch_libs = {n for n in needed if n.startswith(("libtorch", "libc10"))}
    assert torch_libs <= {"libc10.so", "libc10_cuda.so", "libtorch.so", "libtorch_cpu.so", "libtorch_cuda.so"}, needed
    assert not any(n.startswith(("libcudart", "libcuda.so")) for n in needed), needed
    assert "$ORIGIN/../torch/lib" in dyn
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if ".so" in n] == [f"wmpo/{extension.name}"], names


def test_no_build_machine_paths(extension):
    """Host code: -ffile-prefix-map (also through nvcc); device code: no -lineinfo in wheel builds (it
    writes absolute source paths into the cubins)."""
    so = extension.read_bytes()
    assert str(ROOT).encode() not in so and b"site-packages" not in so


def test_imports_under_a_cuda_torch_without_a_gpu(wheel, tmp_path):
    """Under the CUDA torch it was built for, on a machine without a GPU: wmpo._C loads with its CUDA
    kernels registered, CPU ops run the C++ kernels, `python -m wmpo.info` says there is no device."""
    vpy = Path(os.environ.get("WMPO_CUDA_PYTHON", ROOT / ".venv-cu" / "bin" / "python"))
    if not vpy.exists():
        pytest.skip(f"no CUDA-torch Python at {vpy} (make wheel-cuda creates .venv-cu)")
    site = tmp_path / "site"
    _run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)])
    code = _only(str(vpy), site, "import warnings\n"
                 "with warnings.catch_warnings(record=True) as seen:\n"
                 "    warnings.simplefilter('always')\n"
                 "    import torch, wmpo.ops as ops\n"
                 "    from wmpo.ops import dispatch\n"
                 "    x = torch.randn(8, 72); sh = torch.randn(2, 72); sc = torch.randn(2, 72)\n"
                 "    y = ops.adaln_modulate(x, sh, sc, tokens_per_frame=4)\n"
                 "assert not [w for w in seen if 'wmpo' in str(w.message)], [str(w.message) for w in seen]\n"
                 "assert torch.version.cuda and ops.HAS_EXTENSION, dispatch._EXTENSION_ERROR\n"
                 "assert dispatch.extension_has_cuda()\n"
                 "torch.testing.assert_close(y, ops.adaln_modulate_ref(x, sh, sc, tokens_per_frame=4), rtol=1e-5, atol=1e-5)\n"
                 "assert ops.resolve_backend('cpu') == 'cpp'\n"
                 "print('cuda device:', torch.cuda.is_available())\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(code, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    gpu = r.stdout.strip().endswith("True")
    info = _only(str(vpy), site, "import runpy; runpy.run_module('wmpo.info', run_name='__main__')")
    r = subprocess.run(info, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wmpo._C loaded with CUDA kernels" in r.stdout, r.stdout
    if not gpu:
        assert "no CUDA device" in r.stdout, r.stdout


def test_is_refused_under_a_cpu_torch(wheel, tmp_path):
    """Under a CPU build of the same torch minor (this test session's torch, when it is one), the import
    warns that the wheel needs a CUDA torch and does not load wmpo._C; WMPO_STRICT=1 makes it an error."""
    import torch

    if torch.version.cuda:
        pytest.skip("this session's torch has CUDA")
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)])
    code = _only(sys.executable, site, "import wmpo.ops as ops; print(ops.HAS_EXTENSION)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(code, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr[-3000:]
    assert "built with CUDA kernels for a CUDA torch" in r.stderr and "has no CUDA" in r.stderr, r.stderr
    r = subprocess.run(code, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**env, "WMPO_STRICT": "1"})
    assert r.returncode != 0 and "WMPO_STRICT=1" in r.stderr, r.stderr[-3000:]
