"""wmpo: World-Model-based Policy Optimization for vision-language-action models.

A VLA policy is improved by on-policy GRPO inside a learned, action-conditioned video diffusion
world model, judged by a learned reward model (Zhu et al., 2025, arXiv 2511.09515).
"""

__version__ = "0.1.0"


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


_source_checkout_kernels()
