"""Noise schedules and samplers with one contract (set_timesteps / step): rectified-flow Euler over an
explicit step list (the fused flow_step), DDIM."""
from wmpo.diffusion.fewstep import FUSED_MAX_STEPS, fused_euler_sample_cached
from wmpo.diffusion.sampler import DDIMSampler, FlowMatchEulerSampler, ddim_sample, euler_sample
from wmpo.diffusion.schedules import as_step_list, flow_step_list, step_tensor

__all__ = ["FUSED_MAX_STEPS", "fused_euler_sample_cached", "DDIMSampler", "FlowMatchEulerSampler", "euler_sample", "ddim_sample", "flow_step_list", "as_step_list", "step_tensor"]
