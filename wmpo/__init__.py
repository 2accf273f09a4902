"""wmpo: World-Model-based Policy Optimization for vision-language-action models.

A VLA policy is improved by on-policy GRPO inside a learned, action-conditioned video diffusion
world model, judged by a learned reward model (Zhu et al., 2025, arXiv 2511.09515).
"""

__version__ = "0.1.0"
