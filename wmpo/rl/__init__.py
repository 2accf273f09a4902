"""RL algorithms: WMPO (Algorithm 1, GRPO in imagination), GRPO, online GRPO in the simulator,
trajectory-level DPO, the lifelong loop. Group math (advantages, dynamic sampling) is wmpo.data.groups."""
from wmpo.rl.dpo import DPOConfig, DPOTrainer, build_preference_pairs, dpo_loss
from wmpo.rl.grpo import GRPOConfig, GRPOTrainer, clipped_surrogate, executed_token_mask, grpo_loss
from wmpo.rl.lifelong import LifelongConfig, LifelongStages, run_lifelong
from wmpo.rl.online import OnlineGRPOConfig, as_action_decoder, rollout_groups, run_online_grpo, tokenizer_decoder

__all__ = [
    "DPOConfig",
    "DPOTrainer",
    "build_preference_pairs",
    "dpo_loss",
    "GRPOConfig",
    "GRPOTrainer",
    "clipped_surrogate",
    "executed_token_mask",
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
