"""`wmpo import` (outside data -> a trajectory store) and `wmpo export` (a store -> one file)."""
from __future__ import annotations

import argparse

from wmpo.utils.arg_checks import argtype, check_input_file, check_output_file

FORMATS = ("robomimic", "lerobot-hdf5")


def import_main(argv: list[str]) -> int:
    from wmpo.data.import_common import write_store

    p = argparse.ArgumentParser(prog="wmpo import", description="import real robot data (robomimic or LeRobot-style HDF5) "
                                "into a new trajectory store, to train the world model, the reward model and the policy on it")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("file", type=argtype(lambda s: check_input_file(s, "FILE")), help="the HDF5 file to import")
    p.add_argument("--out", required=True, type=argtype(check_output_file), help="the new store (must not exist)")
    p.add_argument("--image-key", default=None,
                   help="the image observation (robomimic: a key of obs/, default agentview_image or the only image; "
                        "lerobot-hdf5: e.g. observation.images.top, default the only camera)")
    p.add_argument("--instruction", default=None, help="the language instruction (default: the file's own)")
    p.add_argument("--task", default=None, help="task name recorded with the episodes (default: the file's env name or stem)")
    p.add_argument("--only-successes", action="store_true", help="leave failed episodes out")
    a = p.parse_args(argv)
    if a.format == "robomimic":
        from wmpo.data.import_robomimic import read_robomimic as read
    else:
        from wmpo.data.import_lerobot import read_lerobot_hdf5 as read
    from pathlib import Path

    episodes, source_args = read(a.file, image=a.image_key, instruction=a.instruction, task=a.task)
    env_meta = {"env_name": a.task or source_args.get("env_name") or Path(a.file).stem, "type": "imported",
                "about": f"episodes imported by `wmpo import --format {a.format}` from {Path(a.file).resolve()}; no simulator "
                         f"is attached (real robot data or another simulator)",
                "source": {"format": a.format, "file": str(Path(a.file).resolve()), "env_args": source_args}}
    r = write_store(episodes, a.out, env_meta, only_successes=a.only_successes)
    left = f", {r['skipped_failures']} failures left out" if r["skipped_failures"] else ""
    print(f"{r['episodes']} episodes ({r['successes']} successes, {r['steps']} steps{left}) -> {a.out}")
    return 0


def export_main(argv: list[str]) -> int:
    from wmpo.data.export import export_single_file

    p = argparse.ArgumentParser(prog="wmpo export", description="write a trajectory store (index + episode folder) as one "
                                "self-contained HDF5 file (robomimic layout; TrajectoryStore reads it read-only)")
    p.add_argument("store", type=argtype(lambda s: check_input_file(s, "STORE")), help="the store's index file (.h5)")
    p.add_argument("--single-file", action="store_true", required=True, help="one self-contained file (the only kind so far)")
    p.add_argument("--out", required=True, type=argtype(check_output_file))
    a = p.parse_args(argv)
    r = export_single_file(a.store, a.out)
    print(f"{r['episodes']} episodes ({r['actions']} steps) -> {r['path']} ({r['bytes'] / 1e6:.1f} MB)")
    return 0
