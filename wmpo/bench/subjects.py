"""What `wmpo bench` times: the models of a preset (random weights), of a finished `wmpo run` folder
(--checkpoint: its VAE, fine-tuned world model, distilled student, policy, reward model and cached initial
frames), or a user's own world model (--model module:factory or path/to/file.py:factory).

A user factory is called with no arguments and returns one of
  - a world model: `wmpo.models.world_model.WorldModel`, `wmpo.models.denoiser_adapter.DenoiserWorldModel`
    (a plain denoiser wrapped), or anything with WorldModel's interface (`is_world_model`);
  - a dict {"world_model": ..., "vae": FrameVAE or a diffusers AutoencoderKL (optional),
    "student": a second world model (optional), "name": str (optional)}.
Without a VAE the bench builds the preset's VAE architecture with the world model's latent channels and size
(random weights: decoding costs the same)."""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

FEW_STEP_MAX = 4
"""a distilled student is timed at the --steps values up to this (docs/fewstep.md: 1, 2, 4 steps)"""


@dataclass
class Subjects:
    source: str
    """what is timed: 'preset micro (random weights)', 'checkpoint RUN', 'model mod:factory'"""
    vae: Any
    world_models: dict[str, Any]
    """'teacher' (the world model) and, when there is one, 'student' (a distilled few-step student)"""
    policy: Any = None
    tokenizer: Any = None
    reward: Any = None
    reward_trained: bool = False
    """a trained reward model (from --checkpoint): its verdicts end trajectories; else random weights"""
    initial_frames: torch.Tensor | None = None
    """uint8 [N, H, W, 3]"""
    frames_note: str = ""
    instruction: str = "do the task"
    horizon_steps: int = 64
    horizon_note: str = ""
    group_size: int = 8
    temperature: float = 1.6
    notes: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


FALLBACK_HORIZON = 400
"""env steps of an imagined trajectory when neither the run / preset nor the task registry gives one"""


@dataclass
class _TaskInfo:
    instruction: str
    horizon: int
    note: str = ""


def _task_spec(task: str) -> _TaskInfo:
    """The task's instruction and horizon from the task registry; without the simulator packages (a plain
    `pip install wmpo` has no robosuite) a generic instruction and FALLBACK_HORIZON, said in the notes."""
    try:
        from wmpo.sim.tasks import get_task
    except ModuleNotFoundError as e:
        return _TaskInfo("do the task", FALLBACK_HORIZON, f"task registry not importable ({e.name} missing): generic "
                         f"instruction, horizon {FALLBACK_HORIZON} unless the run / preset sets imagined_horizon")
    spec = get_task(task)
    return _TaskInfo(spec.instruction, int(spec.horizon))


def _random_frames(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def _plain(x: Any) -> Any:
    return asdict(x) if is_dataclass(x) else x


def _unit_stats(action_dim: int) -> dict[str, np.ndarray]:
    return {"q01": -np.ones(action_dim, dtype=np.float32), "q99": np.ones(action_dim, dtype=np.float32)}


def _random_rollout_models(cfg: Any, K: int, A: int, device: torch.device) -> tuple[Any, Any, Any]:
    """(policy, tokenizer, reward) of the preset's architecture with random weights, for chunks K x A."""
    from wmpo.models.policy import VLAPolicy
    from wmpo.models.reward import RewardModel
    from wmpo.models.tokenizer import ActionTokenizer

    pcfg = replace(cfg.policy_train.policy, chunk_len=K, action_dim=A)
    policy = VLAPolicy(pcfg).to(device).eval()
    reward = RewardModel(cfg.reward_train.reward).to(device).eval()
    return policy, ActionTokenizer(-np.ones(A), np.ones(A)), reward


def from_preset(cfg: Any, device: torch.device, seed: int = 0) -> Subjects:
    """A preset's RunConfig (wmpo.config; the CLI resolves the name): its VAE, world model, policy and reward
    model, random weights (the world model's output layers drawn small but non-zero: the zero init would make
    every chunk trivially the same)."""
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel

    name, task = cfg.preset, cfg.task
    torch.manual_seed(seed)
    vae = FrameVAE(cfg.vae_train.vae).to(device).eval()
    wm = WorldModel(cfg.world_model).to(device).eval()
    with torch.no_grad():
        wm.final.weight.normal_(0, 0.02)
        wm.modulation.weight.normal_(0, 0.02)
    wm.set_action_stats(_unit_stats(cfg.world_model.action_dim))
    policy, tok, reward = _random_rollout_models(cfg, cfg.world_model.chunk_len, cfg.world_model.action_dim, device)
    spec = _task_spec(task)
    horizon = int(cfg.imagined_horizon or spec.horizon)
    return Subjects(
        notes={"task": spec.note} if spec.note else {},
        source=f"preset {name} (random weights)", vae=vae, world_models={"teacher": wm}, policy=policy, tokenizer=tok,
        reward=reward, reward_trained=False, initial_frames=_random_frames(8, cfg.image_size, seed),
        frames_note="random uint8 frames (preset: no run data)", instruction=spec.instruction, horizon_steps=horizon,
        horizon_note=f"the preset's imagined horizon ({'imagined_horizon' if cfg.imagined_horizon else 'task horizon'})",
        group_size=cfg.rollout.group_size, temperature=cfg.grpo.temperature,
        config={"preset": name, "task": task, "vae": _plain(cfg.vae_train.vae), "world_model": _plain(cfg.world_model),
                "policy": _plain(cfg.policy_train.policy), "reward": _plain(cfg.reward_train.reward),
                "sampler_steps": cfg.sampler_steps})


# ---------------------------------------------------------------------- --checkpoint RUN_DIR
def _marker_path(run: Path, stage: str, key: str) -> str | None:
    from wmpo.pipeline.stages import StageRunner

    if not (run / "stages" / f"{stage}.json").is_file():
        return None
    v = StageRunner(run, log=lambda _: None).load_marker(stage).get(key)
    return v if isinstance(v, str) else None


def from_checkpoint(run_dir: str | Path, device: torch.device) -> Subjects:
    """A finished (or partly finished) `wmpo run` folder: VAE (stage vae), world model (wm_finetune, else
    wm_pretrain), student (distill_wm, when run), policy (wmpo's checkpoint, else policy_sft) and reward
    model (reward); the policy and reward model are optional (without them only the world-model rows run)."""
    from wmpo.models.policy import load_policy
    from wmpo.models.reward import load_reward
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel
    from wmpo.pipeline.world_model_env import _cached_initial_frames
    from wmpo.utils.checkpoint import load_json

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise ValueError(f"--checkpoint: {run} is not a `wmpo run` folder (no config.json)")
    cfg = load_json(run / "config.json", what="run config")
    notes: dict[str, str] = {}
    vae_p = _marker_path(run, "vae", "path")
    if vae_p is None:
        raise ValueError(f"--checkpoint: {run} has no finished stage 'vae' (stages/vae.json)")
    wm_p = _marker_path(run, "wm_finetune", "path")
    if wm_p is None:
        wm_p = _marker_path(run, "wm_pretrain", "path")
        if wm_p is None:
            raise ValueError(f"--checkpoint: {run} has no finished world-model stage (wm_finetune or wm_pretrain)")
        notes["world_model"] = "the pretrained world model (wm_finetune has not finished)"
    vae = FrameVAE.from_checkpoint(vae_p).to(device).eval()
    wms = {"teacher": WorldModel.from_checkpoint(wm_p).to(device).eval()}
    student_p = _marker_path(run, "distill_wm", "path")
    if student_p is not None:
        wms["student"] = WorldModel.from_checkpoint(student_p).to(device).eval()
    pol_p = _marker_path(run, "wmpo", "checkpoint") or _marker_path(run, "policy_sft", "policy_path")
    policy = tok = reward = None
    if pol_p is not None:
        policy, tok = load_policy(pol_p, device)
        notes["policy"] = pol_p
    else:
        notes["policy"] = "none: the run has no finished policy_sft stage (loop and grpo rows need one)"
    reward_p = _marker_path(run, "reward", "reward_path")
    if reward_p is not None:
        reward = load_reward(reward_p, device).eval()
        notes["reward"] = reward_p
    else:
        notes["reward"] = "none: the run has no finished reward stage (loop and grpo rows need one)"
    task = str(cfg.get("task", "square"))
    spec = _task_spec(task)
    if spec.note:
        notes["task"] = spec.note
    try:
        frames = torch.as_tensor(_cached_initial_frames(run, "train"))
        frames_note = "the run's cached training initial frames (data/initial_train_*.npz)"
    except ValueError:
        size = vae.frame_size
        frames = _random_frames(8, size)
        frames_note = "random uint8 frames: the run cached no data/initial_train_*.npz (reward verdicts are on noise starts)"
    horizon = int(cfg.get("imagined_horizon") or spec.horizon)
    rollout = cfg.get("rollout", {}) or {}
    return Subjects(
        source=f"checkpoint {run}", vae=vae, world_models=wms, policy=policy, tokenizer=tok, reward=reward,
        reward_trained=reward is not None, initial_frames=frames, frames_note=frames_note, instruction=spec.instruction,
        horizon_steps=horizon, horizon_note="the run's " + ("imagined_horizon" if cfg.get("imagined_horizon") else "task horizon"),
        group_size=int(rollout.get("group_size", 8)), temperature=float((cfg.get("grpo") or {}).get("temperature", 1.6)),
        notes=notes, config={"run_dir": str(run), "task": task, "sampler_steps": cfg.get("sampler_steps"),
                             "student_steps": cfg.get("student_steps"), "world_model": _plain(wms["teacher"].cfg),
                             "vae": _plain(vae.cfg), "checkpoints": {"vae": vae_p, "world_model": wm_p, "student": student_p}})


# ---------------------------------------------------------------------- --model module:factory
def load_factory(spec: str):
    """'package.module:factory' or 'path/to/file.py:factory' -> the factory callable (errors name --model)."""
    if ":" not in spec:
        raise ValueError(f"--model: expected 'module:factory' or 'path/to/file.py:factory', got {spec!r}")
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"--model: expected 'module:factory' or 'path/to/file.py:factory', got {spec!r}")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise ValueError(f"--model: no such file {path}")
        name = f"wmpo_bench_user_{abs(hash(str(path.resolve())))}"
        ms = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(ms)
        sys.modules[name] = module
        try:
            ms.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file
            raise ValueError(f"--model: importing {path} raised {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            raise ValueError(f"--model: cannot import module {mod_name!r} ({e}); is it on PYTHONPATH?") from e
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ValueError(f"--model: module {mod_name!r} has no attribute {fn_name!r}")
    if not callable(fn):
        raise ValueError(f"--model: {mod_name}:{fn_name} is a {type(fn).__name__}, expected a factory function")
    return fn


def _check_world_model(what: str, wm: Any) -> Any:
    from wmpo.models.denoiser_adapter import is_world_model

    if not is_world_model(wm):
        raise ValueError(
            f"{what}: expected a world model (wmpo.models.world_model.WorldModel, a DenoiserWorldModel wrapping your "
            f"denoiser, or an object with cfg, __call__, build_context_cache and forward_cached), got "
            f"{type(wm).__name__}; wrap a plain denoiser(x_t, t, actions) -> velocity with "
            "wmpo.models.denoiser_adapter.DenoiserWorldModel(denoiser, num_context=, chunk_len=, action_dim=, "
            "latent_channels=, latent_size=)")
    return wm


def from_factory(spec: str, device: torch.device, cfg: Any) -> Subjects:
    """The user's world model (and VAE, if the factory gives one); the policy and reward model architectures of
    the preset RunConfig `cfg` with random weights for the loop rows."""
    from wmpo.models.vae import FrameVAE

    preset, task = cfg.preset, cfg.task

    fn = load_factory(spec)
    try:
        out = fn()
    except ValueError as e:
        raise ValueError(f"--model: {spec}() raised: {e}") from e
    except Exception as e:  # noqa: BLE001 - the user's code
        raise ValueError(f"--model: calling {spec}() raised {type(e).__name__}: {e} (a factory takes no arguments)") from e
    parts = out if isinstance(out, dict) else {"world_model": out}
    unknown = set(parts) - {"world_model", "vae", "student", "name"}
    if unknown or "world_model" not in parts:
        raise ValueError(f"--model: {spec}() returned a dict with keys {sorted(parts)}; expected 'world_model' and "
                         "optionally 'vae', 'student', 'name'")
    wm = _check_world_model(f"--model: {spec}() world_model", parts["world_model"])
    wms = {"teacher": wm}
    if parts.get("student") is not None:
        wms["student"] = _check_world_model(f"--model: {spec}() student", parts["student"])
    wc = wm.cfg
    vae = parts.get("vae")
    notes = {}
    if vae is None:
        base = cfg.vae_train.vae
        vcfg = replace(base, latent_channels=int(wc.latent_channels), frame_size=int(wc.latent_size) * base.downsample)
        vae = FrameVAE(vcfg)
        notes["vae"] = f"the {preset} preset's VAE architecture at latent {wc.latent_channels}x{wc.latent_size} (random weights)"
    elif not isinstance(vae, FrameVAE):
        vae = FrameVAE.from_autoencoder_kl(vae)
        notes["vae"] = "the factory's diffusers AutoencoderKL"
    if vae.latent_channels != int(wc.latent_channels) or vae.latent_size != int(wc.latent_size):
        raise ValueError(f"--model: the VAE's latents ({vae.latent_channels}x{vae.latent_size}) do not match the world "
                         f"model's latent_channels/latent_size ({wc.latent_channels}x{wc.latent_size})")
    for m in (vae, *wms.values()):
        if isinstance(m, torch.nn.Module):
            m.to(device).eval()
    for m in wms.values():
        if getattr(m, "action_stats", None) is None:
            m.action_stats = _unit_stats(int(wc.action_dim))
            notes["action_stats"] = "none given: the random policy's actions are taken as already normalized"
    policy, tok, reward = _random_rollout_models(cfg, int(wc.chunk_len), int(wc.action_dim), device)
    spec_t = _task_spec(task)
    if spec_t.note:
        notes["task"] = spec_t.note
    horizon = int(cfg.imagined_horizon or spec_t.horizon)
    return Subjects(
        source=f"model {spec}" + (f" ({parts['name']})" if parts.get("name") else ""), vae=vae, world_models=wms,
        policy=policy, tokenizer=tok, reward=reward, reward_trained=False,
        initial_frames=_random_frames(8, vae.frame_size), frames_note="random uint8 frames (a user model: no run data)",
        instruction=spec_t.instruction, horizon_steps=horizon, horizon_note=f"the {preset} preset's imagined horizon",
        group_size=cfg.rollout.group_size, temperature=cfg.grpo.temperature, notes=notes,
        config={"model": spec, "world_model_class": type(wm).__name__, "world_model": _plain(wc), "vae": _plain(vae.cfg),
                "policy_and_reward": f"the {preset} preset's architectures, random weights"})


def student_steps_for(steps: list[int], explicit: list[int] | None) -> list[int]:
    """The step counts a distilled student is timed at: `explicit`, else the --steps values <= FEW_STEP_MAX."""
    if explicit:
        return list(explicit)
    return [s for s in steps if s <= FEW_STEP_MAX]


def horizon_chunks(horizon_steps: int, chunk_len: int) -> int:
    return max(1, math.ceil(horizon_steps / chunk_len))
