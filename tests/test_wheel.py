"""The wheel: `pip wheel --no-build-isolation .` builds against the installed torch, ships the
extension and the Triton kernels, and installs into a fresh venv that has only torch."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
import torch, wmpo.ops as ops
assert ops.HAS_EXTENSION, "wmpo._C missing from the wheel"
x = torch.randn(8, 72); sh = torch.randn(2, 72); sc = torch.randn(2, 72)
y = ops.adaln_modulate(x, sh, sc, tokens_per_frame=4)
torch.testing.assert_close(y, ops.adaln_modulate_ref(x, sh, sc, tokens_per_frame=4), rtol=1e-5, atol=1e-5)
assert ops.resolve_backend("cpu") == "cpp"
print("ok")
"""


def _run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_builds_and_installs_into_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(dist), str(ROOT)])
    wheels = list(dist.glob("wmpo-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("wmpo/_C") and n.endswith(".so") for n in names), names
    for op in ("adaln_modulate", "gated_residual_adaln", "noisy_context", "flow_step", "action_logprob"):
        assert f"wmpo/kernels/{op}.py" in names and f"wmpo/ops/{op}.py" in names
    assert "wmpo/ops/__init__.py" in names and not any("torch/" in n for n in names)
    # the version names the torch it was built against, and the wheel requires that torch minor
    minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    flavour = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu"
    assert wheels[0].name.startswith(f"wmpo-0.1.0+pt{minor.replace('.', '')}{flavour}-"), wheels[0].name
    zf = zipfile.ZipFile(wheels[0])
    meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Requires-Dist: torch=={minor}.*" in meta and "License: Apache-2.0" in meta
    assert any(n.endswith("LICENSE") and ".dist-info/" in n for n in names) and "wmpo/_build_info.py" in names
    so = zf.read(next(n for n in names if n.startswith("wmpo/_C") and n.endswith(".so")))
    assert str(ROOT).encode() not in so and b"site-packages" not in so  # no build-machine paths inside

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    vpy = venv / "bin" / "python"
    _run([str(vpy), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"])
    _run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])])
    r = _run([str(vpy), "-c", SMOKE], cwd=tmp_path)
    assert r.stdout.strip().endswith("ok")
    r = _run([str(vpy), "-m", "wmpo.info"], cwd=tmp_path)
    assert f"built with:  torch {torch.__version__.split('+')[0]}" in r.stdout and "wmpo._C loaded" in r.stdout
