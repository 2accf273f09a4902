"""Imagination: the batched world-model env and the imagination engine (engine.py: config and entry
points; slots.py: slot state and the one host sync; chunk.py: the chunk and its runner;
group_sampler.py: continuous batching with dynamic sampling; gym_env.py: the world model as a
gymnasium-style vector env with reward-model rewards)."""
from wmpo.rollout.gym_env import WorldModelVecEnv
from wmpo.rollout.world_model_env import WorldModelEnv

__all__ = ["WorldModelEnv", "WorldModelVecEnv"]
