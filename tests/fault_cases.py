"""Bad input for every `wmpo` command, as a hostile user would give it (shared by tests/test_faults.py,
which runs each case in-process, and tests/fault_tour.py, which runs each as a real subprocess).

`make_fixtures(tmp)` writes the files the cases point at: a small trajectory store, tiny VAE,
world-model and policy checkpoints, and broken files (empty, truncated, corrupt, wrong kind, bad JSON).
Each case is (id, argv with {placeholders}, what the error line must mention, placeholders that must
not exist afterwards: nothing may be written).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TINY = ["--preset", "micro"]
COLLECT = ["collect", "--task", "square", "--policy", "random", "--episodes", "1", "--max-steps", "2", "--image-size", "16"]


@dataclass
class Case:
    id: str
    argv: list[str]
    mention: str
    """a substring of the error line (the field, flag or file it names)"""
    not_created: tuple[str, ...] = ()
    """fixture keys whose paths must not exist after the command"""
    needs: str = ""
    """fixture key that must be available (e.g. a read-only folder), else the case is skipped"""


def _episode(T: int, seed: int, size: int = 16):
    from wmpo.data.episode import Episode

    rng = np.random.default_rng(seed)
    return Episode(
        frames=rng.integers(0, 256, (T + 1, size, size, 3), dtype=np.uint8),
        actions=rng.uniform(-1, 1, (T, 7)).astype(np.float32),
        states=rng.normal(size=(T + 1, 4)),
        rewards=np.zeros(T, np.float32),
        dones=np.r_[np.zeros(T - 1, bool), True],
        success=bool(seed % 2),
        finish_step=T,
        instruction="Insert the square into the stick",
        task="square",
        meta={"seed": seed, "start_index": seed},
    )


def read_only_dir(tmp: Path) -> Path | None:
    """A folder this process cannot write in (a chmod-ed one; as root, /sys), or None."""
    d = tmp / "read_only"
    d.mkdir(exist_ok=True)
    d.chmod(0o555)
    for cand in (d, Path("/sys")):
        try:
            with tempfile.TemporaryFile(dir=cand):
                pass
        except OSError:
            return cand
    return None


def make_fixtures(tmp: Path) -> dict[str, str]:
    import torch

    from wmpo.config import get_preset
    from wmpo.data.store import TrajectoryStore
    from wmpo.models.policy import VLAPolicy, save_policy
    from wmpo.models.tokenizer import ActionTokenizer
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel
    from wmpo.utils.checkpoint import save_checkpoint

    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    micro = get_preset("micro")
    fx: dict[str, str] = {}
    store = tmp / "demos.h5"
    with TrajectoryStore(store, "w", env_meta={"env_name": "square", "image_size": 16}) as s:
        for i in range(2):
            s.append(_episode(10, i))
    fx["store"] = str(store)
    vae = tmp / "vae.pt"
    save_checkpoint(vae, {"model": FrameVAE(micro.vae_train.vae).state()})
    fx["vae"] = str(vae)
    wm = tmp / "world_model.pt"
    save_checkpoint(wm, {"model": WorldModel(micro.wm_pretrain.model).state(), "ema": None})
    fx["wm"] = str(wm)
    pol = tmp / "policy.pt"
    pcfg = micro.policy_train.policy
    save_policy(pol, VLAPolicy(pcfg), ActionTokenizer(-np.ones(7), np.ones(7)), pcfg)
    fx["policy"] = str(pol)
    raw = vae.read_bytes()
    (tmp / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    fx["truncated"] = str(tmp / "truncated.pt")
    (tmp / "empty.pt").write_bytes(b"")
    fx["empty"] = str(tmp / "empty.pt")
    (tmp / "corrupt.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    fx["corrupt"] = str(tmp / "corrupt.pt")
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    fx["tensor"] = str(tmp / "tensor.pt")
    (tmp / "notes.txt").write_text("not a store, not a checkpoint\n")
    fx["text"] = str(tmp / "notes.txt")
    (tmp / "bad.json").write_text('{"steps": 3,,}')
    fx["bad_json"] = str(tmp / "bad.json")
    (tmp / "list.json").write_text(json.dumps([1, 2]))
    fx["list_json"] = str(tmp / "list.json")
    (tmp / "latin1.json").write_bytes(b'{"instruction": "caf\xe9"}')
    fx["latin1_json"] = str(tmp / "latin1.json")
    (tmp / "folder").mkdir(exist_ok=True)
    fx["folder"] = str(tmp / "folder")
    bad_store = tmp / "broken.h5"
    bad_store.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    fx["broken_store"] = str(bad_store)
    fx["missing"] = str(tmp / "missing.pt")
    fx["fresh"] = str(tmp / "fresh_out")
    fx["fresh_h5"] = str(tmp / "fresh.h5")
    fx["fresh_json"] = str(tmp / "fresh.json")
    fx["under_file"] = str(tmp / "notes.txt" / "out")
    ro = read_only_dir(tmp)
    if ro is not None:
        fx["ro"] = str(ro / "out")
        fx["ro_h5"] = str(ro / "demos.h5")
    run = tmp / "run_bad_config"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text("{ truncated")
    fx["run_bad_config"] = str(run)
    return fx


def cases(cuda_available: bool = False) -> list[Case]:
    c: list[Case] = []
    add = lambda *a, **k: c.append(Case(*a, **k))  # noqa: E731
    # ---- collect
    add("collect-seed-negative", COLLECT + ["--seed", "-1", "--out", "{fresh_h5}"], "--seed", ("fresh_h5",))
    add("collect-seed-text", COLLECT + ["--seed", "abc", "--out", "{fresh_h5}"], "--seed", ("fresh_h5",))
    add("collect-max-steps-negative", COLLECT + ["--max-steps", "-5", "--out", "{fresh_h5}"], "--max-steps", ("fresh_h5",))
    add("collect-max-steps-zero", COLLECT + ["--max-steps", "0", "--out", "{fresh_h5}"], "--max-steps", ("fresh_h5",))
    add("collect-episodes-zero", COLLECT + ["--episodes", "0", "--out", "{fresh_h5}"], "--episodes", ("fresh_h5",))
    add("collect-workers-zero", COLLECT + ["--workers", "0", "--out", "{fresh_h5}"], "--workers", ("fresh_h5",))
    add("collect-image-size-tiny", COLLECT + ["--image-size", "4", "--out", "{fresh_h5}"], "--image-size", ("fresh_h5",))
    add("collect-temperature-negative", COLLECT + ["--temperature", "-1", "--out", "{fresh_h5}"], "--temperature", ("fresh_h5",))
    add("collect-temperature-nan", COLLECT + ["--temperature", "nan", "--out", "{fresh_h5}"], "--temperature", ("fresh_h5",))
    add("collect-device-bogus", COLLECT + ["--device", "tpu9", "--out", "{fresh_h5}"], "--device", ("fresh_h5",))
    if not cuda_available:
        add("collect-device-cuda-absent", COLLECT + ["--device", "cuda", "--out", "{fresh_h5}"], "--device", ("fresh_h5",))
    add("collect-device-cuda-index", COLLECT + ["--device", "cuda:99", "--out", "{fresh_h5}"], "--device", ("fresh_h5",))
    add("collect-task-unknown", ["collect", "--task", "nope", "--episodes", "1", "--out", "{fresh_h5}"], "--task", ("fresh_h5",))
    add("collect-split-unknown", COLLECT + ["--split", "test", "--out", "{fresh_h5}"], "--split", ("fresh_h5",))
    add("collect-out-is-folder", COLLECT + ["--out", "{folder}"], "--out")
    add("collect-out-under-file", COLLECT + ["--out", "{under_file}"], "--out")
    add("collect-out-read-only", COLLECT + ["--out", "{ro_h5}"], "--out", ("ro_h5",), needs="ro_h5")
    add("collect-out-not-a-store", COLLECT + ["--out", "{text}"], "notes.txt")
    add("collect-out-broken-store", COLLECT + ["--out", "{broken_store}"], "broken.h5")
    add("collect-policy-missing", COLLECT[:4] + ["{missing}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "missing.pt", ("fresh_h5",))
    add("collect-policy-empty", COLLECT[:4] + ["{empty}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "empty.pt", ("fresh_h5",))
    add("collect-policy-truncated", COLLECT[:4] + ["{truncated}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "truncated.pt", ("fresh_h5",))
    add("collect-policy-corrupt", COLLECT[:4] + ["{corrupt}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "corrupt.pt", ("fresh_h5",))
    add("collect-policy-wrong-kind", COLLECT[:4] + ["{vae}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "vae.pt", ("fresh_h5",))
    add("collect-policy-tensor", COLLECT[:4] + ["{tensor}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "tensor.pt", ("fresh_h5",))
    add("collect-policy-folder", COLLECT[:4] + ["{folder}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "folder", ("fresh_h5",))
    add("collect-policy-text", COLLECT[:4] + ["{text}"] + COLLECT[5:] + ["--out", "{fresh_h5}"], "notes.txt", ("fresh_h5",))
    # ---- eval
    EVAL = ["eval", "--task", "square", "--policy", "random", "-n", "1", "--max-steps", "2", "--image-size", "16"]
    add("eval-json-folder", EVAL + ["--json", "{folder}"], "--json")
    add("eval-json-under-file", EVAL + ["--json", "{under_file}"], "--json")
    add("eval-json-read-only", EVAL + ["--json", "{ro_h5}"], "--json", ("ro_h5",), needs="ro_h5")
    add("eval-video-dir-file", EVAL + ["--video-dir", "{text}"], "--video-dir")
    add("eval-episodes-zero", ["eval", "--task", "square", "-n", "0"], "--episodes")
    add("eval-max-steps-negative", EVAL + ["--max-steps", "-1"], "--max-steps")
    add("eval-device-bogus", EVAL + ["--device", "gpu"], "--device")
    add("eval-policy-wrong-kind", EVAL[:4] + ["{wm}"] + EVAL[5:], "world_model.pt")
    add("eval-policy-truncated", EVAL[:4] + ["{truncated}"] + EVAL[5:], "truncated.pt")
    add("eval-task-unknown", ["eval", "--task", "nope"], "--task")
    # ---- train-vae
    VAE = ["train-vae", *TINY, "--store", "{store}", "--out", "{fresh}"]
    for bad, field in [("steps=abc", "steps"), ("steps=2.5", "steps"), ("steps=0", "steps"), ("steps=[1]", "steps"),
                       ("steps=-3", "steps"), ("lr=NaN", "lr"), ("vae.frame_size=-8", "vae.frame_size"),
                       ("vae.block_channels=8", "vae.block_channels"), ("vae=3", "vae"), ("batch_size=true", "batch_size"),
                       ("vae.mid_attention=2", "vae.mid_attention"), ("stepz=3", "stepz")]:
        add(f"train-vae-set-{bad}", VAE + ["--set", bad], field, ("fresh",))
    add("train-vae-config-bad-json", VAE + ["--config", "{bad_json}"], "bad.json", ("fresh",))
    add("train-vae-config-list", VAE + ["--config", "{list_json}"], "list.json", ("fresh",))
    add("train-vae-config-not-utf8", VAE + ["--config", "{latin1_json}"], "latin1.json", ("fresh",))
    add("train-vae-config-missing", VAE + ["--config", "{missing}"], "missing.pt", ("fresh",))
    add("train-vae-config-folder", VAE + ["--config", "{folder}"], "folder", ("fresh",))
    add("train-vae-out-file", ["train-vae", *TINY, "--store", "{store}", "--out", "{text}"], "--out")
    add("train-vae-out-under-file", ["train-vae", *TINY, "--store", "{store}", "--out", "{under_file}"], "--out")
    add("train-vae-out-read-only", ["train-vae", *TINY, "--store", "{store}", "--out", "{ro}"], "--out", ("ro",), needs="ro")
    add("train-vae-store-missing", ["train-vae", *TINY, "--store", "{missing}", "--out", "{fresh}"], "missing.pt", ("fresh",))
    add("train-vae-store-text", ["train-vae", *TINY, "--store", "{text}", "--out", "{fresh}"], "notes.txt", ("fresh",))
    add("train-vae-store-empty", ["train-vae", *TINY, "--store", "{empty}", "--out", "{fresh}"], "empty.pt", ("fresh",))
    add("train-vae-store-broken", ["train-vae", *TINY, "--store", "{broken_store}", "--out", "{fresh}"], "broken.h5", ("fresh",))
    add("train-vae-device-bogus", VAE + ["--device", "quantum"], "--device", ("fresh",))
    add("train-vae-steps-negative", VAE + ["--steps", "-3"], "steps", ("fresh",))
    add("train-vae-preset-unknown", ["train-vae", "--preset", "huge", "--store", "{store}", "--out", "{fresh}"], "--preset", ("fresh",))
    # ---- train-wm
    WM = ["train-wm", *TINY, "--store", "{store}", "--out", "{fresh}"]
    add("train-wm-vae-empty", WM + ["--vae", "{empty}"], "empty.pt", ("fresh",))
    add("train-wm-vae-truncated", WM + ["--vae", "{truncated}"], "truncated.pt", ("fresh",))
    add("train-wm-vae-corrupt", WM + ["--vae", "{corrupt}"], "corrupt.pt", ("fresh",))
    add("train-wm-vae-wrong-kind", WM + ["--vae", "{policy}"], "policy.pt", ("fresh",))
    add("train-wm-vae-tensor", WM + ["--vae", "{tensor}"], "tensor.pt", ("fresh",))
    add("train-wm-init-from-wrong-kind", WM + ["--vae", "{vae}", "--init-from", "{vae}"], "--init-from", ("fresh",))
    add("train-wm-init-from-truncated", WM + ["--vae", "{vae}", "--init-from", "{truncated}"], "truncated.pt", ("fresh",))
    add("train-wm-set-hidden-text", WM + ["--vae", "{vae}", "--set", "model.hidden=abc"], "model.hidden", ("fresh",))
    add("train-wm-set-betas-short", WM + ["--vae", "{vae}", "--set", "betas=[0.9]"], "betas", ("fresh",))
    add("train-wm-batch-size-zero", WM + ["--vae", "{vae}", "--batch-size", "0"], "batch_size", ("fresh",))
    # ---- train-policy / train-reward
    POL = ["train-policy", *TINY, "--store", "{store}", "--out", "{fresh}"]
    add("train-policy-set-steps-text", POL + ["--set", "steps=abc"], "steps", ("fresh",))
    add("train-policy-set-amp-text", POL + ["--set", "amp=yes"], "amp", ("fresh",))
    add("train-policy-set-dropout", POL + ["--set", "policy.dropout=2"], "policy.dropout", ("fresh",))
    add("train-policy-out-file", ["train-policy", *TINY, "--store", "{store}", "--out", "{text}"], "--out")
    add("train-policy-device-cuda-index", POL + ["--device", "cuda:7"], "--device", ("fresh",))
    REW = ["train-reward", *TINY, "--store", "{store}", "--out", "{fresh}"]
    add("train-reward-set-fraction", REW + ["--set", "val_fraction=1.5"], "val_fraction", ("fresh",))
    add("train-reward-set-steps-negative", REW + ["--set", "steps=-1"], "steps", ("fresh",))
    add("train-reward-store-broken", ["train-reward", *TINY, "--store", "{broken_store}", "--out", "{fresh}"], "broken.h5", ("fresh",))
    # ---- wm-eval
    WME = ["wm-eval", "--store", "{store}", "--out", "{fresh}"]
    add("wm-eval-world-model-wrong-kind", WME + ["--vae", "{vae}", "--world-model", "{vae}"], "--world-model", ("fresh",))
    add("wm-eval-vae-corrupt", WME + ["--vae", "{corrupt}", "--world-model", "{wm}"], "corrupt.pt", ("fresh",))
    add("wm-eval-episodes-zero", WME + ["--vae", "{vae}", "--world-model", "{wm}", "--episodes", "0"], "--episodes", ("fresh",))
    add("wm-eval-steps-negative", WME + ["--vae", "{vae}", "--world-model", "{wm}", "--steps", "-1"], "--steps", ("fresh",))
    add("wm-eval-out-file", ["wm-eval", "--store", "{store}", "--out", "{text}", "--vae", "{vae}", "--world-model", "{wm}"], "--out")
    # ---- run
    add("run-task-unknown", ["run", "--task", "nope", *TINY, "--out", "{fresh}"], "task", ("fresh",))
    add("run-seed-negative", ["run", "--task", "square", *TINY, "--seed", "-1", "--out", "{fresh}"], "seed", ("fresh",))
    add("run-lifelong-negative", ["run", "--task", "square", *TINY, "--lifelong", "-1", "--out", "{fresh}"], "lifelong", ("fresh",))
    add("run-preset-unknown", ["run", "--task", "square", "--preset", "huge", "--out", "{fresh}"], "preset", ("fresh",))
    add("run-stop-after-unknown", ["run", "--task", "square", *TINY, "--stop-after", "nope", "--out", "{fresh}"], "stop_after", ("fresh",))
    add("run-out-file", ["run", "--task", "square", *TINY, "--out", "{text}"], "out")
    add("run-out-read-only", ["run", "--task", "square", *TINY, "--out", "{ro}"], "out", ("ro",), needs="ro")
    add("run-config-json-corrupt", ["run", "--task", "square", *TINY, "--out", "{run_bad_config}"], "config.json")
    # ---- corpus
    add("corpus-task-unknown", ["corpus", "--out", "{fresh}", "--tasks", "nope"], "nope", ("fresh",))
    add("corpus-out-file", ["corpus", "--out", "{text}"], "--out")
    add("corpus-workers-zero", ["corpus", "--out", "{fresh}", "--workers", "0"], "--workers", ("fresh",))
    add("corpus-episodes-zero", ["corpus", "--out", "{fresh}", "--episodes-per-task", "0"], "episodes_per_task", ("fresh",))
    return c


def fill(argv: list[str], fx: dict[str, str]) -> list[str]:
    return [a.format(**fx) for a in argv]


def check_error_output(err: str, mention: str) -> str | None:
    """None if `err` is a clean bad-input report (ends in one `error:` line mentioning `mention`, no
    traceback); else what is wrong with it."""
    if "Traceback" in err:
        return "traceback"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if not lines:
        return "no error output"
    last = lines[-1]
    if "error:" not in last:
        return f"last line is not an error line: {last!r}"
    if sum("error:" in ln for ln in lines) != 1:
        return f"more than one error line: {lines}"
    if mention not in last:
        return f"error line does not mention {mention!r}: {last!r}"
    return None


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WMPO_DEBUG", None)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("WMPO_NO_PROGRESS", "1")
    return env
