"""What a built wmpo wheel is, as one JSON object: name, size, version, torch requirement, platform tag,
the build record (wmpo/_build_info.py), the shared libraries the extension needs, and, for a CUDA
wheel, its cubins (cuobjdump --list-elf) and kernel count per architecture.

    python bench/wheel_facts.py dist/wmpo-0.1.0+pt213cu130-*.whl --build-seconds 302 \\
        --command "nice -n 10 make wheel-cuda" --out bench/results/wheel-cuda-<date>.json

Reads the wheel only (nothing is installed or run). cuobjdump: CUDA_HOME, /usr/local/cuda, PATH, else
the copy in Triton's wheel. tests/test_wheel_cuda.py checks the same properties.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def cuobjdump() -> str | None:
    for d in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if d and (Path(d) / "bin" / "cuobjdump").exists():
            return str(Path(d) / "bin" / "cuobjdump")
    if shutil.which("cuobjdump"):
        return shutil.which("cuobjdump")
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    return None


def facts(wheel: Path) -> dict:
    zf = zipfile.ZipFile(wheel)
    names = zf.namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    meta = zf.read(f"{dist_info}/METADATA").decode()
    tags = re.findall(r"^Tag: (.+)$", zf.read(f"{dist_info}/WHEEL").decode(), re.M)
    ns: dict = {}
    exec(zf.read("wmpo/_build_info.py").decode(), ns)
    (so_name,) = [n for n in names if re.fullmatch(r"wmpo/_C\..*\.so", n)]
    out = {
        "wheel": wheel.name,
        "wheel_bytes": wheel.stat().st_size,
        "extension": so_name,
        "extension_bytes": zf.getinfo(so_name).file_size,
        "version": re.search(r"^Version: (.+)$", meta, re.M)[1],
        "requires_dist": re.findall(r"^Requires-Dist: (.+)$", meta, re.M),
        "tags": tags,
        "build_info": {k: v for k, v in ns.items() if k.isupper()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / Path(so_name).name
        so.write_bytes(zf.read(so_name))
        dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
        out["needed"] = re.findall(r"\(NEEDED\).*\[(.+)\]", dyn)
        out["runpath"] = re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.+)\]", dyn)
        tool = cuobjdump()
        if out["build_info"].get("WITH_CUDA") and tool:
            elves = subprocess.run([tool, "--list-elf", str(so)], capture_output=True, text=True).stdout
            out["cubins"] = re.findall(r"ELF file\s+\d+: (\S+)", elves)
            ptx = subprocess.run([tool, "--list-ptx", str(so)], capture_output=True, text=True).stdout
            out["ptx"] = re.findall(r"PTX file\s+\d+: (\S+)", ptx)
            usage = subprocess.run([tool, "--dump-resource-usage", str(so)], capture_output=True, text=True).stdout
            per_arch: dict[str, int] = {}
            arch = None
            for line in usage.splitlines():
                m = re.search(r"arch = (sm_\d+a?)", line)
                if m:
                    arch = m[1]
                elif arch and re.match(r"\s*Function \S+:", line):
                    per_arch[arch] = per_arch.get(arch, 0) + 1
            out["kernel_instantiations_per_arch"] = per_arch
            out["cuobjdump"] = tool
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--build-seconds", type=float, help="wall time of the build that made the wheel")
    ap.add_argument("--command", help="the command that built the wheel")
    ap.add_argument("--note", default="", help="free text kept in the record")
    ap.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = ap.parse_args(argv)
    rec = {"schema": "wmpo.wheel-facts/1", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": args.command, "build_seconds": args.build_seconds, "note": args.note, **facts(args.wheel)}
    text = json.dumps(rec, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
