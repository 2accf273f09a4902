"""Try every fault of issue 12 as a hostile user would and count the outcomes: clean error /
unclear error (not one line) / traceback / wrong or lost / hang.

    python tests/fault_tour.py [--repo PATH] [--json OUT] [--only SUBSTRING] [--subprocess]

--repo runs another checkout's `wmpo` (e.g. the code before the fixes) against the same cases.
The bad-input cases are tests/fault_cases.py (clean = exit 2, one `error:` line naming the file or
field, no traceback, nothing written); the data cases below run real collections and check what
ends up in the store (clean = nothing lost, nothing duplicated, damage reported).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fault_cases import cases, check_error_output, env_for_subprocess, fill, make_fixtures  # noqa: E402

COLLECT = ["collect", "--task", "square", "--policy", "random", "--max-steps", "3", "--image-size", "16"]


REPO = str(HERE.parent)
"""the checkout whose wmpo the tour runs (--repo)"""


def use_repo_code() -> str:
    """Python that makes `import wmpo` load REPO (an editable install's finder would win over sys.path)."""
    return (f"import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]; "
            f"sys.path.insert(0, {REPO!r})\n")


def wmpo_argv(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", use_repo_code() + "import runpy; sys.argv[0] = 'wmpo'; "
            "runpy.run_module('wmpo', run_name='__main__', alter_sys=True)", *argv]


def run(argv: list[str], env: dict, timeout: float = 300, **kw) -> tuple[int | None, str, str]:
    try:
        p = subprocess.run(wmpo_argv(argv), capture_output=True, text=True, env=env, timeout=timeout, **kw)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or ""


def seeds_in(store: Path) -> list[int]:
    """D0 seeds of the episodes a store's index names (plain h5py: works for any version)."""
    out = []
    with h5py.File(store, "r") as f:
        for name in f["data"]:
            out.append(int(json.loads(f[f"data/{name}"].attrs["meta"])["seed"]))
    return sorted(out)


def episode_files(store: Path) -> list[Path]:
    d = store.with_name(store.name + ".episodes")
    return sorted(d.glob("demo_*.h5")) if d.is_dir() else []


def run_in_process(argv: list[str]) -> tuple[int | None, str, str]:
    """`wmpo argv` through wmpo.cli.main in this process (an escaping exception is a traceback)."""
    import contextlib
    import io
    import traceback

    from wmpo.cli import main as wmpo_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = wmpo_main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception:
            traceback.print_exc()
            rc = 1
    return rc, out.getvalue(), err.getvalue()


def classify_error(rc, err, mention) -> tuple[str, str]:
    if rc is None:
        return "hang", "timed out"
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1] if err.strip() else ""
    if rc == 0:
        return "wrong", "exit 0"
    problem = check_error_output(err, mention)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if rc != 0 and problem and problem.startswith("error line does not mention"):
        return "clean", f"(names another field than {mention!r}) {last}"  # still one line naming a field
    if rc != 0 and problem:
        return "unclear", f"exit {rc}: {problem}"  # an error, but not one line
    if rc != 2:
        return "unclear", f"exit {rc}: {last}"
    return "clean", last


# ---- data cases: each -> (outcome, detail)


def data_two_collects(tmp: Path, env: dict):
    """Two `wmpo collect` runs into one --out at once, from different seeds: every episode of a run
    that exits 0 must be in the store, once; a refused run must say why."""
    out = tmp / "two.h5"
    runs = {0: list(range(0, 4)), 100: list(range(100, 104))}
    procs = {s: subprocess.Popen(wmpo_argv(COLLECT + ["--episodes", "4", "--seed", str(s), "--out", str(out)]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for s in runs}
    res = {s: (p.wait(timeout=600), p.stderr.read()) for s, p in procs.items()}
    if any("Traceback" in e for _, e in res.values()):
        return "traceback", [e.strip().splitlines()[-1] for _, e in res.values() if "Traceback" in e][0]
    seeds = seeds_in(out)
    files = episode_files(out)
    want = sorted(x for s, (rc, _) in res.items() if rc == 0 for x in runs[s])
    codes = {s: rc for s, (rc, _) in res.items()}
    if seeds != want or len(files) != len(want):
        return "wrong", f"exit codes {codes}; store holds seeds {seeds} ({len(files)} episode files), expected {want}"
    refused = [e for rc, e in res.values() if rc != 0]
    if refused and "lock" not in refused[0]:
        return "wrong", f"refused without naming the lock: {refused[0].strip()}"
    return "clean", f"exit codes {codes}; store holds seeds {seeds} once each" + (
        f"; refused: {refused[0].strip().splitlines()[-1][:160]}" if refused else "")


def data_killed_collect_rerun(tmp: Path, env: dict):
    out = tmp / "killed.h5"
    argv = COLLECT + ["--episodes", "5", "--seed", "10", "--out", str(out)]
    p = subprocess.Popen(wmpo_argv(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while time.time() - t0 < 300 and len(episode_files(out)) < 2 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = seeds_in(out) if out.exists() else []
    rc, stdout, err = run(argv, env)
    if rc is None or "Traceback" in err:
        return ("hang" if rc is None else "traceback"), err.strip().splitlines()[-1] if err.strip() else ""
    seeds = seeds_in(out)
    if seeds != [10, 11, 12, 13, 14]:
        return "wrong", f"killed with seeds {before}; after the re-run the store holds {seeds}"
    return "clean", f"killed with seeds {before}; re-run -> {seeds}; {stdout.strip().splitlines()[0][:120]}"


def _small_store(tmp: Path, name: str, env: dict) -> Path:
    out = tmp / name
    rc, _, err = run(COLLECT + ["--episodes", "2", "--seed", "0", "--out", str(out)], env)
    assert rc == 0, err
    return out


def _flip_byte(ep: Path, dataset: str, at: int, mask: int) -> None:
    """XOR byte `at` of an episode file's `dataset` with `mask`, in place."""
    with h5py.File(ep, "r") as f:
        off = f[f"data/{ep.stem}/{dataset}"].id.get_offset()
    raw = bytearray(ep.read_bytes())
    raw[off + at] ^= mask
    ep.write_bytes(bytes(raw))


def data_flipped_bytes(tmp: Path, env: dict):
    out = _small_store(tmp, "flipped.h5", env)
    ep = episode_files(out)[1]
    _flip_byte(ep, "actions", 5, 0xFF)
    code = (use_repo_code() + "from wmpo.data.store import TrajectoryStore\n"
            "s = TrajectoryStore(sys.argv[1], 'r')\n"
            "[s.load(i) for i in range(len(s))]\nprint('LOADED')")
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env)
    if "LOADED" in p.stdout:
        return "wrong", "flipped bytes in the actions loaded silently"
    last = p.stderr.strip().splitlines()[-1]
    if ep.name in last and "checksum" in last:
        return "clean", last[-160:]
    return "wrong", last[-160:]


def data_flipped_bytes_cli(tmp: Path, env: dict):
    out = _small_store(tmp, "flipped_cli.h5", env)
    _flip_byte(episode_files(out)[0], "states", 11, 0x10)
    rc, _, err = run(["train-vae", "--preset", "micro", "--store", str(out), "--out", str(tmp / "vae_flipped"),
                      "--set", "steps=1"], env)
    if rc == 0:
        return "wrong", "train-vae trained on a damaged episode"
    return classify_error(rc, err, ep.name)


def data_missing_episode_folder(tmp: Path, env: dict):
    out = _small_store(tmp, "nofolder.h5", env)
    shutil.rmtree(out.with_name(out.name + ".episodes"))
    rc, _, err = run(COLLECT + ["--episodes", "1", "--seed", "7", "--out", str(out)], env)
    with h5py.File(out, "r") as f:
        names = sorted(f["data"])
    if rc == 0 or names != ["demo_0", "demo_1"]:
        return ("traceback" if "Traceback" in err else "wrong"), f"exit {rc}; the index now names {names}"
    return classify_error(rc, err, "episode")


def data_run_folder_copy(tmp: Path, env: dict):
    """A finished stage's marker in a copied run folder must point at the copy's files."""
    code = f"""
import json, shutil, sys
from pathlib import Path
from wmpo.pipeline.stages import Stage, StageRunner
a, b = Path({str(tmp / 'run_a')!r}), Path({str(tmp / 'run_b')!r})
def make(ctx):
    p = ctx / "data" / "x.txt"; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(ctx.name); return {{"path": str(p)}}
StageRunner(a, log=lambda s: None).run([Stage("make", make)], a)
shutil.copytree(a, b)
shutil.rmtree(a)  # moved: only the copy is left
r = StageRunner(b, log=lambda s: None)
outs = r.run([Stage("make", make)], b)
print(outs["make"]["path"])
"""
    p = subprocess.run([sys.executable, "-c", use_repo_code() + code], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return ("traceback" if "Traceback" in p.stderr else "wrong"), p.stderr.strip().splitlines()[-1]
    got = p.stdout.strip()
    if got != str(tmp / "run_b" / "data" / "x.txt"):
        return "wrong", f"the copy's marker points at {got}"
    return "clean", f"the copy's marker resolves to {got}"


DATA_CASES = {
    "data-two-collects-same-out": data_two_collects,
    "data-killed-collect-rerun": data_killed_collect_rerun,
    "data-flipped-bytes-load": data_flipped_bytes,
    "data-flipped-bytes-train": data_flipped_bytes_cli,
    "data-append-missing-episode-folder": data_missing_episode_folder,
    "data-moved-run-folder": data_run_folder_copy,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=str(HERE.parent), help="checkout whose wmpo to run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--subprocess", action="store_true",
                    help="run each bad-input case in its own `python -m wmpo` (slow: imports per case); "
                    "default: through wmpo.cli.main in this process")
    a = ap.parse_args()
    env = env_for_subprocess()
    global REPO
    REPO = str(Path(a.repo).resolve())
    exec(use_repo_code())  # this process too (fixtures, in-process cases)
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("WMPO_NO_PROGRESS", "1")
    os.environ.pop("WMPO_DEBUG", None)
    import torch
    import wmpo

    print(f"wmpo from {Path(wmpo.__file__).parent}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="wmpo_fault_tour_"))
    fx = make_fixtures(tmp / "fx")
    results = []
    for case in cases(torch.cuda.is_available()):
        if a.only and a.only not in case.id:
            continue
        if case.needs and case.needs not in fx:
            results.append({"id": case.id, "outcome": "skipped", "detail": f"no {case.needs} here"})
            continue
        for key in case.not_created:
            p = Path(fx[key])
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        t0 = time.time()
        if a.subprocess:
            rc, _, err = run(fill(case.argv, fx), env, timeout=a.timeout, cwd=tmp)
        else:
            rc, _, err = run_in_process(fill(case.argv, fx))
        outcome, detail = classify_error(rc, err, case.mention.format(**fx))
        written = [fx[k] for k in case.not_created if Path(fx[k]).exists()]
        if outcome == "clean" and written:
            outcome, detail = "wrong", f"wrote {written} before failing"
        results.append({"id": case.id, "outcome": outcome, "detail": detail, "seconds": round(time.time() - t0, 1)})
        print(f"{outcome:9s} {case.id:40s} {detail[:150]}", flush=True)
    for name, fn in DATA_CASES.items():
        if a.only and a.only not in name:
            continue
        t0 = time.time()
        try:
            outcome, detail = fn(tmp, env)
        except Exception as e:  # the tour itself must report, not die
            outcome, detail = "wrong", f"{type(e).__name__}: {e}"
        results.append({"id": name, "outcome": outcome, "detail": detail, "seconds": round(time.time() - t0, 1)})
        print(f"{outcome:9s} {name:40s} {detail[:150]}", flush=True)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("clean", "unclear", "traceback", "wrong", "hang", "skipped")}
    tried = len(results) - counts["skipped"]
    print(f"\ntried {tried}: {counts['clean']} clean errors / correct, {counts['unclear']} errors not in one line, "
          f"{counts['traceback']} tracebacks, {counts['wrong']} wrong results or lost data, {counts['hang']} hangs "
          f"({counts['skipped']} skipped)")
    if a.json:
        Path(a.json).write_text(json.dumps({"repo": a.repo, "tried": tried, "counts": counts, "results": results}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if counts["unclear"] + counts["traceback"] + counts["wrong"] + counts["hang"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
