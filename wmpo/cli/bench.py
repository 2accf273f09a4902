"""`wmpo bench`: imagined frames/s (and MFU) of the imagination engine, one command, one JSON schema
(wmpo.bench.run). CPU-safe by default: the micro preset, a small batch, progress on stderr."""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
from pathlib import Path

EXAMPLES = """examples:
  wmpo bench                                            # micro preset on this machine (seconds; CPU-safe)
  wmpo bench --preset tiny --steps 4,2,1 --repeats 5
  wmpo bench --checkpoint runs/tiny-square --steps 30,4,2,1   # the run's teacher at 30/4/2/1 steps, its student at 4/2/1
  wmpo bench --model my_pkg.models:make_world_model     # your own world model (docs/benchmarks.md)
  wmpo bench --preset paper --batch 16,64 --peak-tflops 989  # one GPU
"""


def _ints(flag: str):
    def parse(text: str) -> list[int]:
        try:
            vals = [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected a comma list of integers (e.g. 30,4,2,1), got {text!r}")
        if not vals or min(vals) < 1:
            raise argparse.ArgumentTypeError(f"{flag}: expected integers >= 1, got {text!r}")
        return vals
    return parse


def _default_out(source: str) -> Path:
    """bench/results/ in a source checkout, else the current folder."""
    root = Path(__file__).resolve().parents[2]
    folder = root / "bench" / "results" if (root / "bench").is_dir() and (root / ".git").exists() else Path.cwd()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"bench-{source}-{stamp}.json"


def parser() -> argparse.ArgumentParser:
    from wmpo.bench.run import MODES
    from wmpo.config import PRESETS

    ap = argparse.ArgumentParser(prog="wmpo bench", description=__doc__, epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--checkpoint", metavar="RUN_DIR", help="a `wmpo run` folder: its VAE, world model, distilled student, "
                      "policy, reward model and initial frames")
    what.add_argument("--model", metavar="MODULE:FACTORY", help="your own world model: FACTORY() in MODULE (or path/to/file.py) "
                      "returns a WorldModel, a DenoiserWorldModel or {'world_model': ..., 'vae': ...}")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="micro",
                    help="models to time (random weights), or the policy/reward architecture for --model (default micro)")
    ap.add_argument("--task", default="square", help="task of the instruction and horizon (default square)")
    ap.add_argument("--steps", type=_ints("--steps"), default=[], help="Euler steps per chunk, a comma list (default: the "
                    "preset's or run's sampler_steps); one row per value")
    ap.add_argument("--student-steps", type=_ints("--student-steps"), default=[], help="steps of the distilled student "
                    "(default: the --steps values <= 4, else the run's student_steps)")
    ap.add_argument("--batch", type=_ints("--batch"), default=None, help="trajectories per chunk, a comma list (default 4 on "
                    "the CPU, 16 on a GPU)")
    ap.add_argument("--chunks", type=int, default=2, help="timed action chunks per measurement (default 2)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up chunks per row, not timed (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; rows report median, min, max, IQR (default 3)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)} (default all)")
    ap.add_argument("--no-reference", action="store_true", help="skip the eager reference rows (imagine_reference)")
    ap.add_argument("--horizon-chunks", type=int, default=None, help="GRPO horizon in chunks (default: the run's or preset's "
                    "horizon; shorter is recorded as not at the horizon)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: dense bf16 of a known GPU; "
                    "none on a CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default bf16 on CUDA, fp32 on the CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/bench-<what>-<UTC>.json in a checkout, "
                    "else ./bench-<what>-<UTC>.json)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def main(argv: list[str]) -> int:
    import torch

    a = parser().parse_args(argv)
    from wmpo.bench.measure import write_json
    from wmpo.bench.run import BenchOptions, print_table, run_bench

    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {device} asked for, but torch sees no CUDA device")
    if a.checkpoint and not Path(a.checkpoint).is_dir():
        raise ValueError(f"--checkpoint: no such folder {a.checkpoint}")
    batch = a.batch or ([16] if device.startswith("cuda") else [4])
    from wmpo.config import get_preset

    opts = BenchOptions(
        preset=None if a.checkpoint else get_preset(a.preset, task=a.task), checkpoint=a.checkpoint, model=a.model, steps=a.steps, student_steps=a.student_steps,
        batch=batch, chunks=a.chunks, warmup=a.warmup, repeats=a.repeats,
        modes=tuple(m for m in a.modes.replace(" ", "").split(",") if m), reference=not a.no_reference,
        horizon_chunks=a.horizon_chunks, peak_tflops=a.peak_tflops, device=device,
        dtype=a.dtype or ("bf16" if device.startswith("cuda") else "fp32"), seed=a.seed,
        command=shlex.join(["wmpo", "bench", *argv]))
    quiet = a.quiet or os.environ.get("WMPO_NO_PROGRESS") == "1"
    say = (lambda _: None) if quiet else (lambda m: print(f"[wmpo bench] {m}", file=sys.stderr, flush=True))
    doc = run_bench(opts, progress=say)
    source = "checkpoint" if a.checkpoint else "model" if a.model else a.preset
    path = write_json(Path(a.out) if a.out else _default_out(source), doc)
    print_table(doc)
    print(f"wrote {path}")
    return 0 if doc["summary"]["frames_per_sec"] is not None else 1
