"""scikit-build-core dynamic-metadata provider (pyproject.toml [[tool.dynamic-metadata]]): the wheel's
version carries a local tag naming the torch it is built against, and it requires that torch.

    version       <wmpo/__init__.py __version__>+pt<major><minor><cpu | cu<CUDA>>   e.g. 0.1.0+pt213cpu
    dependencies  numpy, torch==<major>.<minor>.*

The C++ extension uses torch's C++ API, which is not stable across torch minor versions: a wheel
built against torch 2.13 must be installed next to torch 2.13.x. WMPO_LOCAL_VERSION overrides the
tag (WMPO_LOCAL_VERSION=none drops it, for an index that refuses local versions, e.g. PyPI).
The build runs without isolation (pip ... --no-build-isolation) so that torch is the installed one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torch_tag() -> tuple[str, str]:
    """('pt213cpu' or 'pt213cu130', 'torch==2.13.*') for the torch this Python imports."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the build environment
        raise RuntimeError("wmpo: the build needs the installed torch (install torch first, then build with "
                           f"pip ... --no-build-isolation): {e}") from None
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    flavour = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu"
    return f"pt{major}{minor}{flavour}", f"torch=={major}.{minor}.*"


def base_version() -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (ROOT / "wmpo" / "__init__.py").read_text(), re.M)
    if not m:
        raise RuntimeError("wmpo: no __version__ = \"...\" line in wmpo/__init__.py")
    return m.group(1)


def dynamic_metadata(settings, project) -> dict:
    local, torch_req = torch_tag()
    local = os.environ.get("WMPO_LOCAL_VERSION", local).strip()
    version = base_version() if local.lower() in ("", "none") else f"{base_version()}+{local}"
    return {"version": version, "dependencies": ["numpy", torch_req]}
