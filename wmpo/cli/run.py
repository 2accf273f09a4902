"""`wmpo run`: the whole WMPO pipeline for one task and preset, resumable stage by stage.

expert demos -> VAE -> world-model pretraining -> policy SFT -> P real rollouts of the base policy
-> world-model fine-tuning -> reward model -> WMPO (GRPO in imagination) -> [baselines: online
GRPO, DPO on the same budget P] -> evaluation on the evaluation initial states -> report.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from wmpo.config import get_preset
    from wmpo.pipeline.run import run_pipeline

    ap = argparse.ArgumentParser(prog="wmpo run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="square | stack_three | three_piece_assembly | coffee")
    ap.add_argument("--preset", default="tiny", help="micro | tiny | cpu | small | paper")
    ap.add_argument("--out", required=True, help="output folder (rerun with the same options to resume)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baselines", action="store_true", help="also run online GRPO and DPO on the same budget P")
    ap.add_argument("--lifelong", type=int, default=0, metavar="N",
                    help="after WMPO, N lifelong rounds: collect P real rollouts, fine-tune world and reward models, WMPO again")
    ap.add_argument("--corpus", default=None, metavar="DIR",
                    help="world-model pretraining corpus folder, shared between runs (presets with a corpus; default OUT/corpus)")
    ap.add_argument("--corpus-as-is", action="store_true",
                    help="use the --corpus folder as it is, collecting nothing (pretraining streamed over machines: each "
                         "resume pretrains on the slice the folder holds then; fill it with `wmpo corpus --seed-base`)")
    ap.add_argument("--stop-after", default=None, help="stop after this stage (a long run in parts)")
    ap.add_argument("--upgrade-config", action="store_true",
                    help="resume a run written by an older wmpo whose config lacks fields added since (values unchanged)")
    args = ap.parse_args(argv)
    if args.corpus_as_is and not args.corpus:
        ap.error("--corpus-as-is: needs --corpus DIR")
    extra = {"corpus_dir": str(Path(args.corpus).resolve())} if args.corpus else {}
    cfg = get_preset(args.preset, task=args.task, seed=args.seed, baselines=args.baselines, lifelong_rounds=args.lifelong, **extra)
    t0 = time.time()
    outs = run_pipeline(cfg, args.out, stop_after=args.stop_after, upgrade_config=args.upgrade_config,
                        corpus_as_is=args.corpus_as_is)
    print(f"wmpo run: finished in {time.time() - t0:.0f} s; report: {outs.get('report', {}).get('report', '(not reached)')}")
    return 0
