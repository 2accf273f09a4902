"""RL algorithms: GRPO (in imagination and online in the simulator), trajectory-level DPO, lifelong loop."""
from wmpo.rl.dpo import DPOConfig, DPOTrainer, build_preference_pairs, dpo_loss, groups_from_start_index
from wmpo.rl.grpo import (
    GRPOConfig,
    GRPOTrainer,
    assemble_batch,
    clipped_surrogate,
    dynamic_sampling_filter,
    executed_token_mask,
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
    "groups_from_start_index",
    "GRPOConfig",
    "GRPOTrainer",
    "assemble_batch",
    "clipped_surrogate",
    "dynamic_sampling_filter",
    "executed_token_mask",
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
