"""Keep a long `wmpo run` across machines that do not outlive a session: save the small part of its
run folder into the repository, restore it on the next machine, and resume.

    python experiments/persist.py save RUN experiments/coffee-cpu/run     # before the machine goes
    python experiments/persist.py restore experiments/coffee-cpu/run RUN  # on the next machine
    wmpo run ... --out RUN                                                # resumes where it stopped

Kept: the config, the stage markers and their history, logs, reports, result files, videos and every
checkpoint. Left out: the data (trajectory stores, corpus), which the pipeline regenerates from its
seeds when a later stage needs it (`Stage.regenerable`), and the optimizer moments of large training
checkpoints (`--slim-mb`, default 8 MB: a world-model checkpoint keeps its model, EMA, RNG and step;
training resumes with a fresh AdamW, re-warmed). The folder written is a plain copy: `git add` it.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DATA_SUFFIXES = (".h5", ".hdf5", ".lock")
DATA_DIRS = ("data", "corpus")


def is_data(rel: Path) -> bool:
    """A trajectory store, its episodes folder or lock, or anything under the run's data / corpus folders."""
    if rel.parts and rel.parts[0] in DATA_DIRS:
        return True
    return any(p.endswith(".episodes") for p in rel.parts) or rel.name.endswith(DATA_SUFFIXES)


def slim_copy(src: Path, dst: Path) -> bool:
    """Copy a torch checkpoint without its optimizer moments; -> False when it has none (not copied)."""
    import torch

    st = torch.load(src, map_location="cpu", weights_only=False)
    keys = [k for k in ("optim", "optimizer") if isinstance(st, dict) and st.get(k) is not None]
    if not keys:
        return False
    for k in keys:
        st[k] = None
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(st, tmp)
    tmp.replace(dst)
    return True


def save(run: Path, dest: Path, slim_mb: float, max_mb: float) -> int:
    if not (run / "config.json").is_file():
        raise SystemExit(f"error: run: {run} holds no config.json (not a wmpo run folder)")
    files = [p for p in sorted(run.rglob("*")) if p.is_file() and not is_data(p.relative_to(run))]
    dest.mkdir(parents=True, exist_ok=True)
    kept = {p.relative_to(run) for p in files}
    for old in sorted(dest.rglob("*"), reverse=True):  # a file the run no longer has is not kept either
        rel = old.relative_to(dest)
        if old.is_file() and rel not in kept:
            old.unlink()
    total = 0
    for p in files:
        rel = p.relative_to(run)
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".pt" and p.stat().st_size > slim_mb * 2**20 and slim_copy(p, out):
            how = "slim"
        else:
            shutil.copy2(p, out)
            how = "copy"
        total += out.stat().st_size
        if out.stat().st_size > 2**20:
            print(f"{how:5s} {rel} ({out.stat().st_size / 2**20:.1f} MB)")
    print(f"saved {len(files)} files, {total / 2**20:.1f} MB, to {dest}")
    if total > max_mb * 2**20:
        # the copy is made all the same (nothing is lost); the exit status says the commit will be large
        print(f"warning: dest: {total / 2**20:.1f} MB is over --max-mb {max_mb} (copied all the same)", file=sys.stderr)
        return 2
    return 0


def restore(src: Path, run: Path) -> int:
    if not (src / "config.json").is_file():
        raise SystemExit(f"error: src: {src} holds no config.json (not a saved run)")
    n = 0
    for p in sorted(src.rglob("*")):
        if not p.is_file():
            continue
        out = run / p.relative_to(src)
        if out.exists() and out.stat().st_mtime >= p.stat().st_mtime:
            continue  # the run's own file is as new: keep it
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, out)
        n += 1
    print(f"restored {n} files into {run}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="RUN -> DEST (small files only)")
    s.add_argument("run", type=Path)
    s.add_argument("dest", type=Path)
    s.add_argument("--slim-mb", type=float, default=8.0, help="checkpoints above this size lose their optimizer moments")
    s.add_argument("--max-mb", type=float, default=80.0, help="exit 2 (after copying: nothing is lost) when the copy is larger")
    r = sub.add_parser("restore", help="SRC -> RUN (files the run lacks or holds older)")
    r.add_argument("src", type=Path)
    r.add_argument("run", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "save":
        return save(a.run, a.dest, a.slim_mb, a.max_mb)
    return restore(a.src, a.run)


if __name__ == "__main__":
    sys.exit(main())
