"""RL algorithms: GRPO (in imagination and online in the simulator), trajectory-level DPO, lifelong loop."""
from wmpo.rl.dpo import DPOConfig, DPOTrainer, build_preference_pairs, dpo_loss
from wmpo.rl.grpo import (
    GRPOConfig,
    GRPOTrainer,
    assemble_batch,
    clipped_surrogate,
    dynamic_sampling_filter,
    group_advantages,
    grpo_loss,
)
from wmpo.rl.lifelong import LifelongConfig, LifelongStages, run_lifelong
from wmpo.rl.online import OnlineGRPOConfig, as_action_decoder, rollout_groups, run_online_grpo, tokenizer_decoder

__all__ = [
    "DPOConfig",
    "DPOTrainer",
    "build_preference_pairs",
    "dpo_loss",
    "GRPOConfig",
    "GRPOTrainer",
    "assemble_batch",
    "clipped_surrogate",
    "dynamic_sampling_filter",
    "group_advantages",
    "grpo_loss",
    "LifelongConfig",
    "LifelongStages",
    "run_lifelong",
    "OnlineGRPOConfig",
    "as_action_decoder",
    "rollout_groups",
    "run_online_grpo",
    "tokenizer_decoder",
]
