"""Noise schedules and samplers (rectified-flow Euler with an explicit step list; DDIM)."""
from wmpo.diffusion.sampler import ddim_sample, euler_sample
from wmpo.diffusion.schedules import as_step_list, flow_step_list, step_tensor

__all__ = ["euler_sample", "ddim_sample", "flow_step_list", "as_step_list", "step_tensor"]
