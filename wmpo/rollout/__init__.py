"""Imagination: the batched world-model env and the imagination engine (engine.py: config and entry
points; slots.py: slot state and the one host sync; chunk.py: the chunk and its runner;
group_sampler.py: continuous batching with dynamic sampling)."""
from wmpo.rollout.world_model_env import WorldModelEnv

__all__ = ["WorldModelEnv"]
