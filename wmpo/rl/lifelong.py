"""Lifelong WMPO (paper section 4.5): collect P real rollouts with the current policy, fine-tune the
world model and the reward model on them, run WMPO, evaluate, repeat.

The loop is written against stage callables the pipeline passes in (wmpo.pipeline wires the real
collectors/trainers), and is resumable: after every finished iteration it checkpoints the policy
and appends the iteration's record to DIR/lifelong.json; a restarted run skips finished iterations.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from wmpo.utils.checkpoint import load_checkpoint, save_checkpoint, save_json
from wmpo.utils.logging import ScalarLogger


@dataclass
class LifelongConfig:
    iterations: int = 3
    """rounds of collect -> fine-tune world model / reward model -> WMPO (paper Fig. 6: 3)"""
    budget_per_iteration: int = 128
    """P, real trajectories collected with the current policy each round (paper: 128)"""
    accumulate_data: bool = True
    """fine-tune on every round's real data so far (False: only the newest round)"""
    evaluate_base: bool = True
    """evaluate the starting policy once before the first round (iteration 0 of the curve)"""


@dataclass
class LifelongStages:
    """The stage functions of one round. `data` is whatever `collect` returns (e.g. a store path)."""

    collect: Callable[[nn.Module, int, int], Any]
    """(policy, P, iteration) -> real rollouts of the current policy"""
    finetune_world_model: Callable[[list[Any], int], Any]
    """(data rounds, iteration) -> world model fine-tuned on them"""
    finetune_reward: Callable[[list[Any], int], Any]
    """(data rounds, iteration) -> reward model fine-tuned on them"""
    run_wmpo: Callable[[nn.Module, Any, Any, int], dict]
    """(policy, world model, reward model, iteration) -> stats; updates the policy in place"""
    evaluate: Callable[[nn.Module, int], dict] | None = None
    """(policy, iteration) -> metrics, e.g. {'success_rate': ...} on the evaluation initial states"""


def run_lifelong(
    policy: nn.Module,
    stages: LifelongStages,
    cfg: LifelongConfig,
    out_dir: str | Path | None = None,
    logger: ScalarLogger | None = None,
) -> list[dict[str, Any]]:
    """Run the lifelong loop; -> one record per round (plus the base evaluation as iteration 0).

    With out_dir, finished rounds are checkpointed (policy state + records) and skipped on resume.
    The data returned by `collect` must then be picklable-free handles (paths, ids) if resume is to
    reuse earlier rounds' data: it is stored in lifelong.json with `default=str`.
    """
    records: list[dict[str, Any]] = []
    data_rounds: list[Any] = []
    done = 0
    ckpt = rec_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json(out_dir / "lifelong_config.json", asdict(cfg))
        ckpt, rec_path = out_dir / "lifelong_policy.pt", out_dir / "lifelong.json"
        if rec_path.is_file() and ckpt.is_file():
            state = json.loads(rec_path.read_text())
            records, data_rounds = state["records"], state["data"]
            done = int(state["done"])
            policy.load_state_dict(load_checkpoint(ckpt)["policy"])

    def log(rec: dict[str, Any]) -> None:
        if logger is not None:
            logger.scalars({f"lifelong/{k}": v for k, v in rec.get("eval", {}).items() if isinstance(v, (int, float))}, rec["iteration"])

    def checkpoint() -> None:
        if ckpt is not None:
            save_checkpoint(ckpt, {"policy": policy.state_dict(), "done": done})
            save_json(rec_path, {"done": done, "records": records, "data": data_rounds})

    if done == 0 and not records and cfg.evaluate_base and stages.evaluate is not None:
        rec = {"iteration": 0, "eval": stages.evaluate(policy, 0)}
        records.append(rec)
        log(rec)
        checkpoint()
    for it in range(done + 1, cfg.iterations + 1):
        data = stages.collect(policy, cfg.budget_per_iteration, it)
        data_rounds.append(data)
        use = data_rounds if cfg.accumulate_data else [data]
        wm = stages.finetune_world_model(use, it)
        rm = stages.finetune_reward(use, it)
        stats = stages.run_wmpo(policy, wm, rm, it)
        rec = {"iteration": it, "real_trajectories": cfg.budget_per_iteration * it, "wmpo": stats}
        if stages.evaluate is not None:
            rec["eval"] = stages.evaluate(policy, it)
        records.append(rec)
        log(rec)
        done = it
        checkpoint()
    return records
