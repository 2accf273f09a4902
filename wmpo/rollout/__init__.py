"""The imagination engine: batched world-model env, KV cache, continuous batching."""
from wmpo.rollout.world_model_env import WorldModelEnv

__all__ = ["WorldModelEnv"]
