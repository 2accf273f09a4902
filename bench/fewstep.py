"""Few-step world model: fidelity curves and speed of the teacher and its distilled student, one run.

For each (model, steps) in teacher x --teacher-steps (default 30 8 4 2 1) and student x --student-steps
(default 4 2 1), on held-out real episodes (open-loop replay of their real actions from their real first
frame, wmpo.pipeline.diagnostics):
  - PSNR / SSIM vs horizon (and at 64 frames: psnr_at_64 / ssim_at_64, None when the episodes are shorter;
    psnr_at_h / ssim_at_h at the longest horizon reached, `horizon`),
  - outcome agreement: the reward model's verdict on the imagined replay vs the real outcome,
  - imagined frames/s: WorldModelEnv.step (world model + VAE decode of all K frames) on one batch of
    --batch first frames and random actions, the same batch and engine for every row, measured in this run
    (--repeats rounds interleaved over the rows, best of each row kept: the CPU is shared).
Writes bench/results/fewstep-<UTC stamp>.json ({"rows": [...], "curves": ..., header}) and a PSNR/SSIM plot.

  python bench/fewstep.py --teacher T.pt --student S.pt --vae vae.pt --reward reward.pt --heldout H.h5 \
      --label "cpu preset: ..."
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import result_header, sync, write_result  # noqa: E402

from wmpo.data.loader import load_episodes  # noqa: E402
from wmpo.models.reward import load_reward  # noqa: E402
from wmpo.models.vae import FrameVAE  # noqa: E402
from wmpo.models.world_model import WorldModel  # noqa: E402
from wmpo.pipeline import diagnostics as dg  # noqa: E402
from wmpo.rollout.world_model_env import WorldModelEnv  # noqa: E402
from wmpo.utils.frames import uint8_to_model  # noqa: E402


def frames_per_sec(vae, wm, steps: int, first: torch.Tensor, actions: list[torch.Tensor], device: torch.device,
                   fused_max_steps: int | None = None) -> float:
    """Imagined frames/s of WorldModelEnv at `steps` Euler steps: reset(first), one warm-up chunk, then
    one timed step (decoded) per action chunk. fused_max_steps 0: the step-by-step path (no fused path)."""
    env = WorldModelEnv(vae, wm, steps=steps, device=device, generator=torch.Generator(device=device).manual_seed(0),
                        fused_max_steps=fused_max_steps)
    env.reset(first)
    env.step(actions[0])
    sync(device)
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    sync(device)
    wall = time.perf_counter() - t0
    return first.shape[0] * wm.cfg.chunk_len * len(actions) / wall


def _at(curve: list, h: int):
    return curve[h - 1] if 0 < h <= len(curve) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the teacher world_model.pt")
    ap.add_argument("--student", required=True, help="student.pt from `wmpo distill-wm`")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--reward", required=True, help="reward.pt (outcome agreement)")
    ap.add_argument("--heldout", nargs="+", required=True, help="held-out real base-policy episode store(s)")
    ap.add_argument("--episodes", type=int, default=32, help="held-out episodes (the issue: >= 32)")
    ap.add_argument("--teacher-steps", type=int, nargs="+", default=[30, 8, 4, 2, 1])
    ap.add_argument("--student-steps", type=int, nargs="+", default=[4, 2, 1])
    ap.add_argument("--batch", type=int, default=16, help="trajectories of the frames/s measurement")
    ap.add_argument("--chunks", type=int, default=4, help="timed chunks of the frames/s measurement")
    ap.add_argument("--repeats", type=int, default=3, help="frames/s rounds over all rows, interleaved; each row keeps its best")
    ap.add_argument("--label", default="", help="what these numbers are (e.g. 'smoke test on a micro teacher')")
    ap.add_argument("--plot", default=None, help="PNG of PSNR/SSIM vs horizon (default: next to the JSON)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for flag in ("episodes", "batch", "chunks", "repeats"):
        if getattr(a, flag) < 1:
            print(f"error: --{flag}: expected an integer >= 1, got {getattr(a, flag)}", file=sys.stderr)
            return 2
    if min(a.teacher_steps + a.student_steps) < 1:
        print("error: --teacher-steps/--student-steps: expected step counts >= 1", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    vae = FrameVAE.from_checkpoint(a.vae).to(device).eval()
    models = {"teacher": WorldModel.from_checkpoint(a.teacher).to(device).eval(),
              "student": WorldModel.from_checkpoint(a.student).to(device).eval()}
    if not models["student"].cfg.step_conditioned:
        print(f"error: --student: {a.student} is not a step-conditioned student (wmpo distill-wm)", file=sys.stderr)
        return 2
    stats = models["teacher"].action_stats
    if stats is None:
        print(f"error: --teacher: {a.teacher} holds no action statistics", file=sys.stderr)
        return 2
    reward = load_reward(a.reward, device)
    eps, _ = load_episodes(a.heldout, limit=a.episodes)
    real_success = [bool(e.success) for e in eps]
    K, A = models["teacher"].cfg.chunk_len, models["teacher"].cfg.action_dim
    g = torch.Generator().manual_seed(a.seed)
    first = uint8_to_model(torch.as_tensor(np.stack([eps[i % len(eps)].frames[0] for i in range(a.batch)]))).to(device)
    actions = [(torch.rand(a.batch, K, A, generator=g) * 2 - 1).to(device) for _ in range(a.chunks)]
    rows, curves = [], {}
    plan = [("teacher", s) for s in a.teacher_steps] + [("student", s) for s in a.student_steps]
    for name, steps in plan:
        wm = models[name]
        r = dg.open_loop_fidelity(vae, wm, eps, stats, steps=steps, device=device, seed=a.seed)
        frames = r.pop("frames")
        outcome = dg.outcome_agreement(reward, frames, r["lengths"], real_success, device)
        ps, ss = r["imagined"]["psnr"], r["imagined"]["ssim"]
        h = max((i + 1 for i, v in enumerate(ps) if v is not None), default=0)
        rows.append({"model": name, "steps": steps, "psnr_at_64": _at(ps, 64), "ssim_at_64": _at(ss, 64),
                     "outcome_agreement": outcome["agreement"], "frames_per_sec": None, "horizon": h,
                     "psnr_at_h": _at(ps, h), "ssim_at_h": _at(ss, h),
                     "imagined_success_rate": outcome["imagined_success_rate"]})
        curves[f"{name}_{steps}"] = r
        print(f"{name:8s} {steps:3d} steps: PSNR@{h} {rows[-1]['psnr_at_h']:.2f}  SSIM@{h} {rows[-1]['ssim_at_h']:.3f}  "
              f"agreement {outcome['agreement']:.3f}", flush=True)
    # speed: every row on the same batch and actions, rounds interleaved (a busy CPU slows rows alike), best kept
    # plus the student on the step-by-step path (fused path off): what the fused few-step path buys
    speed_plan = [(n, s, None) for n, s in plan] + [("student", s, 0) for s in a.student_steps]
    fps = [[] for _ in speed_plan]
    for _ in range(a.repeats):
        for i, (name, steps, fmax) in enumerate(speed_plan):
            fps[i].append(frames_per_sec(vae, models[name], steps, first, actions, device, fmax))
    loop_rows = [{"model": "student", "steps": s, "path": "step loop (fused off)", "frames_per_sec": max(f),
                  "frames_per_sec_rounds": f} for (_, s, _), f in zip(speed_plan[len(plan):], fps[len(plan):])]
    for r, f in zip(rows, fps):
        r["frames_per_sec"], r["frames_per_sec_rounds"] = max(f), f
        print(f"{r['model']:8s} {r['steps']:3d} steps: {r['frames_per_sec']:.1f} imagined frames/s", flush=True)
    for r in loop_rows:
        print(f"student  {r['steps']:3d} steps, step loop (fused off): {r['frames_per_sec']:.1f} imagined frames/s", flush=True)
    base = next((r for r in rows if r["model"] == "teacher" and r["steps"] == max(a.teacher_steps)), rows[0])
    for r in rows:
        r["speedup_vs_teacher"] = r["frames_per_sec"] / base["frames_per_sec"]
    result = {**result_header("fewstep", device), "label": a.label, "teacher": a.teacher, "student": a.student,
              "episodes": len(eps), "real_success_rate": float(np.mean(real_success)), "batch": a.batch, "chunks": a.chunks,
              "rows": rows, "student_step_loop": loop_rows, "curves": {k: {"psnr": v["imagined"]["psnr"], "ssim": v["imagined"]["ssim"], "at": v["at"]}
                                       for k, v in curves.items()}}
    path = write_result(a.out, "fewstep", result)
    dg.write_fidelity_plot(curves, Path(a.plot) if a.plot else path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
