"""`wmpo distill-wm`: distil a world model (the teacher) into a few-step student (wmpo.train.distill)."""
from __future__ import annotations

import argparse
import json

from wmpo.cli.config_args import add_config_args, check_checkpoint, config_from_args, given
from wmpo.cli.train import section_preset

distill_preset = section_preset("distill")


def main(argv: list[str]) -> int:
    from wmpo.cli.config_args import check_input_file
    from wmpo.data.store import TrajectoryStore
    from wmpo.train.distill import distill_world_model

    ap = argparse.ArgumentParser(prog="wmpo distill-wm", description="distil a world model into a few-step (1, 2, 4 step) "
                                 "shortcut student conditioned on the step size; resumable from OUT/train_state.pt")
    ap.add_argument("--teacher", required=True, help="world_model.pt from `wmpo train-wm` (its EMA weights)")
    ap.add_argument("--data", nargs="+", required=True, metavar="STORE", help="trajectory store path(s) to distil on")
    ap.add_argument("--out", required=True, help="output folder (student.pt, train_state.pt, config.json, tb/, result.json)")
    ap.add_argument("--vae", required=True, help="vae.pt from `wmpo train-vae` (the teacher's latent space)")
    add_config_args(ap, "steps=500 base_steps=16 batch_size=8")
    ap.add_argument("--steps", type=int, help="shorthand for --set steps=N")
    ap.add_argument("--batch-size", type=int, help="shorthand for --set batch_size=N")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT/train_state.pt exists")
    a = ap.parse_args(argv)
    cfg = config_from_args(a, distill_preset, extra=given({"steps": a.steps, "batch_size": a.batch_size}))
    cfg.check()
    check_checkpoint(a.teacher, "--teacher", "world_model")
    for p in a.data:
        check_input_file(p, "--data")
        with TrajectoryStore(p, "r"):
            pass
    r = distill_world_model(cfg, a.teacher, a.data, a.out, vae=a.vae, device=a.device, resume=not a.no_resume)
    print(json.dumps(r))
    return 0
