"""`wmpo bench`: build what is timed (wmpo.bench.subjects), time every row in interleaved rounds
(wmpo.bench.rows), and return one JSON document:

  schema    "wmpo.bench/1"
  summary   frames_per_sec (median of the headline row), its spread, mfu, backend, threads, device, command,
            git_sha, headline (which row), date, and a compact table of every row
  header    device, threads, git SHA, date, versions, environment (wmpo.bench.measure.result_header)
  settings  the options the run used (steps, batch, chunks, warmup, repeats, modes, dtype, peak)
  subjects  what was timed (source, notes, configs, initial frames, reward model)
  backends  op -> the backend it ran with
  rows      per (mode, model, steps, batch): frames_per_sec {median, min, max, iqr, n, values}, mfu,
            flops_per_frame, speedup_vs_reference (imagine), time_split, and per mode extras (grpo:
            trajectories/hour, horizon, at_horizon_fraction, what the reward model is)
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from wmpo.bench import rows as R
from wmpo.bench import subjects as S
from wmpo.bench.measure import backends, peak_flops, result_header, spread

SCHEMA = "wmpo.bench/1"
MODES = ("imagine", "loop", "grpo")


@dataclass
class BenchOptions:
    preset: Any = None
    """the RunConfig of a preset (the CLI resolves --preset and --task): the models to time, or the
    policy / reward architectures for a user's model; unused with checkpoint"""
    checkpoint: str | None = None
    model: str | None = None
    steps: list[int] = field(default_factory=list)
    """Euler steps per chunk of the world model (empty: the preset's / run's sampler_steps)"""
    student_steps: list[int] = field(default_factory=list)
    """steps of the distilled student (empty: the run's student_steps and the --steps values <= 4)"""
    batch: list[int] = field(default_factory=lambda: [4])
    chunks: int = 2
    warmup: int = 1
    repeats: int = 3
    modes: tuple[str, ...] = MODES
    reference: bool = True
    horizon_chunks: int | None = None
    peak_tflops: float | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    seed: int = 0
    command: str = ""


def _check(o: BenchOptions) -> None:
    for name in ("chunks", "repeats"):
        if getattr(o, name) < 1:
            raise ValueError(f"--{name}: expected an integer >= 1, got {getattr(o, name)}")
    if o.warmup < 0:
        raise ValueError(f"--warmup: expected an integer >= 0, got {o.warmup}")
    if not o.batch or min(o.batch) < 1:
        raise ValueError(f"--batch: expected integers >= 1, got {o.batch}")
    if o.steps and min(o.steps) < 1 or o.student_steps and min(o.student_steps) < 1:
        raise ValueError(f"--steps/--student-steps: expected integers >= 1, got {o.steps} / {o.student_steps}")
    bad = [m for m in o.modes if m not in MODES]
    if bad or not o.modes:
        raise ValueError(f"--modes: expected a comma list of {MODES}, got {list(o.modes)}")
    if o.checkpoint and o.model:
        raise ValueError("--checkpoint/--model: give one of them (a run folder, or your own model)")
    if o.horizon_chunks is not None and o.horizon_chunks < 1:
        raise ValueError(f"--horizon-chunks: expected an integer >= 1, got {o.horizon_chunks}")
    if o.peak_tflops is not None and o.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops: expected a positive number, got {o.peak_tflops}")
    if o.dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype: expected fp32 or bf16, got {o.dtype!r}")


def _subjects(o: BenchOptions, device: torch.device) -> S.Subjects:
    if o.checkpoint:
        return S.from_checkpoint(o.checkpoint, device)
    if o.preset is None:
        raise ValueError("preset: expected a RunConfig (a wmpo.config preset) when there is no checkpoint")
    if o.model:
        return S.from_factory(o.model, device, o.preset)
    return S.from_preset(o.preset, device, seed=o.seed)


def _plan(o: BenchOptions, subj: S.Subjects) -> tuple[list[int], list[int]]:
    """(teacher steps, student steps)."""
    conf = subj.config
    teacher = list(o.steps) or [int(conf.get("sampler_steps") or 30)]
    if "student" not in subj.world_models:
        if o.student_steps:
            raise ValueError(f"--student-steps: {subj.source} has no distilled student (stage distill_wm / 'student')")
        return teacher, []
    run_default = [int(conf["student_steps"])] if conf.get("student_steps") else [S.FEW_STEP_MAX]
    if o.student_steps:
        return teacher, list(o.student_steps)
    return teacher, (S.student_steps_for(list(o.steps), None) if o.steps else []) or run_default


def _build_rows(o: BenchOptions, subj: S.Subjects, device: torch.device, autocast: Callable) -> tuple[list[R.Row], dict]:
    teacher_steps, student_steps = _plan(o, subj)
    plan = [("teacher", s) for s in teacher_steps] + [("student", s) for s in student_steps]
    rows: list[R.Row] = []
    skipped: dict[str, str] = {}
    can_loop = subj.policy is not None and subj.reward is not None
    if not can_loop and ({"loop", "grpo"} & set(o.modes)):
        skipped["loop/grpo"] = "no policy or no reward model: " + "; ".join(f"{k}: {v}" for k, v in subj.notes.items()
                                                                            if k in ("policy", "reward"))
    K = int(subj.world_models["teacher"].cfg.chunk_len)
    hz_chunks = S.horizon_chunks(subj.horizon_steps, K)
    if o.horizon_chunks is not None and o.horizon_chunks < hz_chunks:
        horizon_steps = o.horizon_chunks * K
        hz_note = (f"NOT the horizon: --horizon-chunks {o.horizon_chunks} ({horizon_steps} steps) of {subj.horizon_note}, "
                   f"{subj.horizon_steps} steps")
    else:
        horizon_steps = hz_chunks * K if o.horizon_chunks is None else o.horizon_chunks * K
        hz_note = f"{subj.horizon_note}: {subj.horizon_steps} steps ({hz_chunks} chunks of {K})"
    for B in o.batch:
        for model, steps in plan:
            if "imagine" in o.modes:
                if o.reference and model == "teacher":
                    rows.append(R.ImagineRow(subj, model, steps, B, chunks=o.chunks, warmup=o.warmup, device=device,
                                             autocast=autocast, reference=True, seed=o.seed))
                rows.append(R.ImagineRow(subj, model, steps, B, chunks=o.chunks, warmup=o.warmup, device=device,
                                         autocast=autocast, seed=o.seed))
            if can_loop and "loop" in o.modes:
                rows.append(R.LoopRow(subj, model, steps, B, chunks=o.chunks, warmup=o.warmup, device=device, dtype=o.dtype,
                                      seed=o.seed))
            if can_loop and "grpo" in o.modes:
                rows.append(R.GRPORow(subj, model, steps, B, horizon_steps=horizon_steps, horizon_note=hz_note, device=device,
                                      dtype=o.dtype, seed=o.seed))
    return rows, skipped


def run_bench(o: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time everything `o` asks for; -> the result document (module docstring)."""
    _check(o)
    say = progress or (lambda _: None)
    device = torch.device(o.device)
    subj = _subjects(o, device)
    if device.type == "cuda" and o.dtype == "bf16":
        for m in (subj.vae, subj.reward, *subj.world_models.values()):
            if isinstance(m, torch.nn.Module):
                m.to(torch.bfloat16)

    def autocast():
        if device.type == "cuda" and o.dtype == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    say(f"{subj.source}; device {device}, {torch.get_num_threads()} threads, dtype {o.dtype}")
    rows, skipped = _build_rows(o, subj, device, autocast)
    say(f"{len(rows)} rows x {o.repeats} rounds (warm-up first, not timed)")
    for i, row in enumerate(rows):
        say(f"warm-up {i + 1}/{len(rows)}: {row.label()}")
        try:
            row.prepare()
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - keep the other rows' numbers, name the failure
            row.error = f"{type(e).__name__}: {e}"
            say(f"  failed: {row.error}")
    for r in range(o.repeats):
        for row in rows:
            if row.error:
                continue
            try:
                fps = row.measure()
            except Exception as e:  # noqa: BLE001
                row.error = f"{type(e).__name__}: {e}"
                say(f"  {row.label()}: failed: {row.error}")
                continue
            row.samples.append(fps)
            say(f"round {r + 1}/{o.repeats}  {row.label()}: {fps:10.2f} frames/s")
    for row in rows:
        if not row.error and row.samples:
            try:
                row.finish()
            except Exception as e:  # noqa: BLE001
                row.extra["finish_error"] = f"{type(e).__name__}: {e}"
    return _document(o, subj, rows, skipped, device)


def _row_json(row: R.Row, peak: float | None) -> dict[str, Any]:
    out = row.describe()
    if row.error:
        out["error"] = row.error
    if row.samples:
        fps = spread(row.samples)
        out["frames_per_sec"] = fps
        out["flops_per_frame"] = row.flops_per_frame
        out["tflops_per_sec"] = row.flops_per_frame * fps["median"] / 1e12 if row.flops_per_frame else None
        out["mfu"] = row.flops_per_frame * fps["median"] / peak if (peak and row.flops_per_frame) else None
    extra = dict(row.extra)
    if "seconds_per_chunk" in extra:
        extra["seconds_per_chunk"] = spread(extra["seconds_per_chunk"])
    out.update(extra)
    return out


def _document(o: BenchOptions, subj: S.Subjects, rows: list[R.Row], skipped: dict, device: torch.device) -> dict[str, Any]:
    peak = peak_flops(device, o.peak_tflops)
    out_rows = [_row_json(r, peak) for r in rows]
    # speedups over the reference row of the same (model, steps, batch)
    ref = {(r["model"], r["steps"], r["batch"]): r["frames_per_sec"]["median"] for r in out_rows
           if r["mode"] == "imagine_reference" and "frames_per_sec" in r}
    for r in out_rows:
        key = (r["model"], r["steps"], r["batch"])
        if r["mode"] == "imagine" and "frames_per_sec" in r and key in ref:
            r["speedup_vs_reference"] = r["frames_per_sec"]["median"] / ref[key]
    ok = [r for r in out_rows if "frames_per_sec" in r]
    head = next((r for r in ok if r["mode"] == "imagine" and r["model"] == "teacher"), None) or (ok[0] if ok else None)
    teach = {(r["steps"], r["batch"]): r for r in ok if r["mode"] == "imagine" and r["model"] == "teacher"}
    base = max(teach, default=None)  # the teacher at the most steps: what the student is compared with
    for r in ok:
        if r["mode"] == "imagine" and r["model"] == "student" and base is not None:
            b = next((t for (s, bb), t in teach.items() if bb == r["batch"] and s == base[0]), None)
            if b is not None:
                r["speedup_vs_teacher"] = {"teacher_steps": b["steps"],
                                           "ratio": r["frames_per_sec"]["median"] / b["frames_per_sec"]["median"]}
    hdr = result_header("wmpo_bench", device, command=o.command)
    be = backends(device)
    summary = {
        "frames_per_sec": head["frames_per_sec"]["median"] if head else None,
        "frames_per_sec_spread": ({k: head["frames_per_sec"][k] for k in ("min", "max", "iqr", "n")} if head else None),
        "mfu": head.get("mfu") if head else None,
        "mfu_note": None if peak else "no peak FLOP/s known for this device: pass --peak-tflops",
        "headline": (f"{head['mode']} {head['model']} {head['steps']} steps, batch {head['batch']}" if head else
                     "no row finished"),
        "backend": be.get("adaln_modulate"),
        "threads": torch.get_num_threads(),
        "device": hdr["device"],
        "command": o.command,
        "git_sha": hdr["git_sha"],
        "date": hdr["date"],
        "table": [{"mode": r["mode"], "model": r["model"], "steps": r["steps"], "batch": r["batch"],
                   "frames_per_sec": r["frames_per_sec"]["median"] if "frames_per_sec" in r else None,
                   "error": r.get("error")} for r in out_rows],
    }
    settings = {f.name: getattr(o, f.name) for f in fields(o) if f.name not in ("command", "preset")}
    settings["preset"] = None if o.checkpoint or o.preset is None else o.preset.preset
    settings["peak_flops"] = peak
    settings["modes"] = list(o.modes)
    return {"schema": SCHEMA, "summary": summary, "header": hdr, "settings": settings,
            "subjects": {"source": subj.source, "notes": subj.notes, "initial_frames": subj.frames_note,
                         "reward_model": "trained" if subj.reward_trained else ("random weights" if subj.reward is not None else None),
                         "instruction": subj.instruction, "horizon_steps": subj.horizon_steps, "config": subj.config},
            "backends": be, "skipped": skipped, "rows": out_rows}


def print_table(doc: dict[str, Any], file=None) -> None:
    """The rows for people: median frames/s [min, max], MFU, speedups."""
    file = file or sys.stdout
    s = doc["summary"]
    print(f"wmpo bench: {doc['subjects']['source']} on {s['device']} (backend {s['backend']}, {s['threads']} threads, "
          f"git {s['git_sha']})", file=file)
    for r in doc["rows"]:
        name = f"{r['mode']:<17} {r['model']:<8} steps {r['steps']:<3} batch {r['batch']:<4}"
        if "frames_per_sec" not in r:
            print(f"  {name} failed: {r.get('error')}", file=file)
            continue
        f = r["frames_per_sec"]
        extra = []
        if r.get("mfu") is not None:
            extra.append(f"MFU {r['mfu']:.1%}")
        if "speedup_vs_reference" in r:
            extra.append(f"{r['speedup_vs_reference']:.2f}x the reference")
        if "speedup_vs_teacher" in r:
            extra.append(f"{r['speedup_vs_teacher']['ratio']:.2f}x the teacher at {r['speedup_vs_teacher']['teacher_steps']} steps")
        if r["mode"] == "grpo" and "trajectories_per_hour_median" in r:
            extra.append(f"{r['trajectories_per_hour_median']:.0f} trajectories/h, {r['at_horizon_fraction']:.0%} at the horizon")
        print(f"  {name} {f['median']:10.2f} frames/s [{f['min']:.2f}, {f['max']:.2f}]  " + "  ".join(extra), file=file)
    for k, v in doc["skipped"].items():
        print(f"  skipped {k}: {v}", file=file)
