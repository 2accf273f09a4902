"""wmpo: World-Model-based Policy Optimization for vision-language-action models.

A VLA policy is improved by on-policy GRPO inside a learned, action-conditioned video diffusion
world model, judged by a learned reward model (Zhu et al., 2025, arXiv 2511.09515).
"""

__version__ = "0.1.0"


def _require_torch() -> None:
    """wmpo needs PyTorch: say so plainly (and which torch) instead of a bare ModuleNotFoundError,
    then check the running torch against the one the extension was built with (wmpo.build_info)."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        raise ImportError(
            "wmpo requires PyTorch, which is not installed in this Python. Install the torch this wmpo was "
            "built for first (a wheel's version says it: 0.1.0+pt213cpu needs torch 2.13, CPU build: "
            "pip install 'torch==2.13.*' --index-url https://download.pytorch.org/whl/cpu), then "
            "`python -m wmpo.info` shows what works.") from None
    from wmpo.build_info import check_torch

    check_torch()


def show_config() -> None:
    """Print wmpo's version, the torch/CUDA it was built with and runs with, the backends each op
    can use here (and why not), Triton and the device. Same as `python -m wmpo.info`."""
    from wmpo.info import show_config as show

    show()


def _source_checkout_kernels() -> None:
    """In a source checkout (no pip install), serve the top-level `kernels/` folder as `wmpo.kernels`,
    the name the wheel installs it under. Installed wheels and editable installs find it themselves."""
    import importlib.util
    import sys
    from pathlib import Path

    if "wmpo.kernels" in sys.modules or (Path(__file__).parent / "kernels").is_dir():
        return
    src = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
    if not src.is_file():
        return
    try:
        if importlib.util.find_spec("wmpo.kernels") is not None:  # an editable install's finder maps it
            return
    except (ImportError, ValueError):
        pass
    spec = importlib.util.spec_from_file_location("wmpo.kernels", src, submodule_search_locations=[str(src.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["wmpo.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_require_torch()
_source_checkout_kernels()
