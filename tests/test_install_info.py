"""For people who pip-install wmpo (issue 14, part 1): `python -m wmpo.info` / `wmpo.show_config()`,
the build's record of its torch, the version's local tag and torch requirement, the import-time
torch check (warn; raise under WMPO_STRICT=1 or for an explicit backend), a clear message without
torch, and CLI commands that name the optional package they miss."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wmpo
from wmpo.build_info import built_with

ROOT = Path(__file__).resolve().parents[1]
MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])
TAG = f"pt{MINOR.replace('.', '')}" + ("cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu")
needs_build = pytest.mark.skipif(built_with() is None, reason="wmpo not built (no wmpo._build_info)")


def _py(code: str, env_extra: dict | None = None, args=()):
    env = {**os.environ, **(env_extra or {})}
    env.pop("WMPO_STRICT", None) if "WMPO_STRICT" not in (env_extra or {}) else None
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


@needs_build
def test_installed_version_and_torch_requirement():
    version = importlib.metadata.version("wmpo")
    assert version == f"{wmpo.__version__}+{TAG}"
    requires = importlib.metadata.requires("wmpo") or []
    assert f"torch=={MINOR}.*" in requires, requires
    info = built_with()
    assert info["TORCH_VERSION"] == torch.__version__.split("+")[0] and info["WMPO_VERSION"] == version


@needs_build
def test_info_command_text_and_json():
    r = subprocess.run([sys.executable, "-m", "wmpo.info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"wmpo {wmpo.__version__}+{TAG}" in out
    assert f"built with:  torch {torch.__version__.split('+')[0]}" in out and f"running:     torch {torch.__version__}" in out
    assert "triton" in out and "device:" in out
    for op in ("adaln_modulate", "flow_step", "action_logprob", "frame_causal_attention", "modulate"):
        assert f"  {op}  [auto: cpu -> " in out
    if not torch.cuda.is_available():
        assert "cuda   no: " in out  # and it says why
    r = subprocess.run([sys.executable, "-m", "wmpo.info", "--json"], capture_output=True, text=True, timeout=300)
    c = json.loads(r.stdout)
    assert c["running"]["torch"] == torch.__version__ and c["torch_mismatch"] == ""
    assert set(c["ops"]["adaln_modulate"]["backends"]) == {"cpp", "cuda", "triton", "ref"}
    assert c["ops"]["adaln_modulate"]["auto_cpu"] == ("cpp" if c["extension"]["loaded"] else "ref")


def test_show_config_prints(capsys):
    wmpo.show_config()
    out = capsys.readouterr().out
    assert out.startswith("wmpo ") and "backends per op" in out


# a stand-in record of a build made against another torch minor, installed before `import wmpo`
OTHER_BUILD = """
import sys, types, warnings
m = types.ModuleType("wmpo._build_info")
m.WMPO_VERSION, m.TORCH_VERSION, m.TORCH_CUDA_VERSION, m.WITH_CUDA = "0.1.0+pt212cpu", "2.12.0", "", False
m.CXX11_ABI, m.CUDA_ARCHITECTURES, m.NVCC_VERSION, m.CUDA_NOTE, m.COMPILER = 1, "", "", "", "GNU"
sys.modules["wmpo._build_info"] = m
"""


def test_torch_minor_mismatch_warns_and_does_not_load_the_extension():
    code = OTHER_BUILD + """
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import torch, wmpo, wmpo.ops as ops
    x = torch.randn(8, 16); s = torch.randn(2, 16)
    y = ops.adaln_modulate(x, s, s)
msgs = [str(i.message) for i in w]
assert any("built against torch 2.12.0" in m and "pip install" in m for m in msgs), msgs
assert not ops.HAS_EXTENSION
assert any("falling back to the plain-PyTorch reference" in m and "2.12.0" in m for m in msgs), msgs
torch.testing.assert_close(y, ops.adaln_modulate_ref(x, s, s))
try:
    ops.adaln_modulate(x, s, s, backend="cpp")
except ops.BackendUnavailableError as e:
    assert "2.12.0" in str(e) and "backend= was given" in str(e), e
else:
    raise AssertionError("an explicit backend fell back")
print("ok")
"""
    r = _py(code, {"WMPO_BACKEND": "auto"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_torch_minor_mismatch_raises_under_strict():
    r = _py(OTHER_BUILD + "import wmpo\n", {"WMPO_STRICT": "1"})
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "built against torch 2.12.0" in r.stderr and "WMPO_STRICT=1" in r.stderr


def test_import_without_torch_says_torch_is_required():
    code = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
try:
    import wmpo
except ImportError as e:
    assert type(e) is ImportError and "wmpo requires PyTorch" in str(e) and "pip install" in str(e), repr(e)
    print("ok")
"""
    r = _py(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_cli_names_the_missing_optional_package():
    code = """
import sys
class NoH5py:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "h5py":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoH5py())
from wmpo.cli import main
sys.exit(main(["train-wm", "--help"]))
"""
    r = _py(code)
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    assert "wmpo train-wm: error:" in r.stderr and "'h5py'" in r.stderr and 'pip install "wmpo[full]"' in r.stderr
    assert "Traceback" not in r.stderr


def test_license_is_apache():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text
