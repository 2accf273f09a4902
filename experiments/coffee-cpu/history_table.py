"""Print the WMPO iteration table of this experiment's README from a saved WMPO state.

    python experiments/coffee-cpu/history_table.py experiments/coffee-cpu/run/policy_wmpo/state.pt

Every number comes from the state's `history` (one record per WMPO iteration, upgraded the way a
resumed run upgrades it); nothing is estimated: a value an old record lacks prints as "not recorded".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from wmpo.rl.wmpo import upgrade_history_record

HEADER = (
    "| iteration | groups mixed / tried | imagined success (all) | kept batch success | entropy | ratio mean [min, max] "
    "| grad norm | clip frac | optimizer steps | real check (24 train-heldout states) | rollout s |"
)


def _imagined(h: dict) -> str:
    if "imagined_success_rate" not in h or "imagined_trajectories" not in h:
        return "not recorded"
    n = int(h["imagined_trajectories"])
    return f"{100 * h['imagined_success_rate']:.1f}% ({round(h['imagined_success_rate'] * n)}/{n})"


def _real(h: dict) -> str:
    if "real/success_rate" not in h:
        return "-"
    n = int(h.get("real/episodes", 0))
    rate = h["real/success_rate"]
    return f"{round(rate * n)}/{n} = {100 * rate:.1f}%" if n else f"{100 * rate:.1f}%"


def row(h: dict) -> str:
    h = upgrade_history_record(h)
    if "kept_success_rate" not in h:
        kept = "not recorded"
    else:
        kept = f"{round(h['kept_success_rate'] * h['trajectories'])}/{h['trajectories']}" if h.get("trajectories") else "0/0"
    ratio = (f"{h['grpo/ratio_mean']:.3f} [{h['grpo/ratio_min']:.2f}, {h['grpo/ratio_max']:.2f}]"
             if "grpo/ratio_mean" in h else "-")
    return (f"| {h['iteration']} | {h['groups_tried'] - h['groups_dropped']} / {h['groups_tried']} | {_imagined(h)} | {kept} "
            f"| {h.get('grpo/entropy', float('nan')):.2f} | {ratio} | {h.get('grpo/grad_norm', float('nan')):.2f} "
            f"| {h.get('grpo/clip_frac', float('nan')):.3f} | {int(h.get('grpo/optimizer_steps', 0))} | {_real(h)} "
            f"| {h['rollout_seconds']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("state", type=Path, help="policy_wmpo/state.pt of a WMPO run")
    args = ap.parse_args(argv)
    if not args.state.is_file():
        print(f"history_table: no such file: {args.state}", file=sys.stderr)
        return 2
    state = torch.load(args.state, map_location="cpu", weights_only=False)
    history = state.get("history") if isinstance(state, dict) else None
    if not history:
        print(f"history_table: {args.state} holds no WMPO history", file=sys.stderr)
        return 2
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for h in history:
        print(row(h))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
