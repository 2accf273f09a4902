"""The driver the distributed benchmarks share: run a script's `--worker` mode under torchrun at each world
size in turn (one rank per core, one thread each), collect each run's JSON, and write the comparison."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def add_world_size_args(ap: argparse.ArgumentParser) -> None:
    """The flags every distributed benchmark takes, and the hidden ones of its `--worker` mode."""
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per world size (after one warm-up)")
    ap.add_argument("--world-sizes", default="1,2")
    ap.add_argument("--out", default=None, help="result JSON (default: print only)")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. the machine's other load)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)


def run_world_sizes(script: str, worker_args: list[str], world_sizes: list[int], batch: int, group: int,
                    describe: Callable[[dict], str]) -> list[dict]:
    """`script --worker --worker-out FILE *worker_args` under `torchrun --nproc-per-node n` for each n; each
    run's JSON gains its launch wall time and the load average around it. `describe(run)` is printed."""
    runs = []
    for n in world_sizes:
        if batch % (group * n):
            raise SystemExit(f"error: --batch {batch} is not whole groups of {group} on {n} ranks")
        with tempfile.TemporaryDirectory() as tmp:
            res = Path(tmp) / "r.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), script, "--worker",
                   "--worker-out", str(res), *worker_args, "--threads", "1"]
            env = {**os.environ, "WMPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            env.setdefault("MUJOCO_GL", "egl")
            load0 = os.getloadavg()
            t0 = time.time()
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"error: the {n}-rank run failed:\n{(p.stdout + p.stderr)[-3000:]}")
            r = json.loads(res.read_text())
            r["launch_wall_s"] = time.time() - t0
            r["loadavg_before"], r["loadavg_after"] = list(load0), list(os.getloadavg())
            runs.append(r)
            print(f"world size {n}: {describe(r)}")
    return runs


def write_comparison(out: dict, runs: list[dict], rate_key: str, path: str | None) -> dict:
    """`out` with the runs and the last world size's speed-up over the first on `rate_key`; written to `path`."""
    out = {**out, "runs": runs}
    if len(runs) >= 2:
        out["speedup"] = runs[-1][rate_key] / runs[0][rate_key]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
    return out
