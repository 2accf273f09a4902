"""`wmpo train-vae`, `train-wm`, `train-policy`, `train-reward` and `wm-eval`: argument parsing and
presets for the training loops of wmpo.train (which import no CLI and no preset)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from wmpo.cli.config_args import add_config_args, check_command_args, config_from_args, given


def section_preset(section: str) -> Callable[[str], Any]:
    """name -> the `section` of the pipeline preset `name` (wmpo.config: micro | tiny | small | paper)."""

    def preset(name: str) -> Any:
        from wmpo.config import get_preset

        return getattr(get_preset(name), section)

    preset.__doc__ = f"The {section} section of the pipeline preset `name` (wmpo.config)."
    return preset


vae_preset = section_preset("vae_train")
world_model_preset = section_preset("wm_pretrain")
policy_preset = section_preset("policy_train")
reward_preset = section_preset("reward_train")


def _store_out(ap: argparse.ArgumentParser, store_help: str, out_help: str) -> None:
    ap.add_argument("--store", nargs="+", required=True, help=store_help)
    ap.add_argument("--out", required=True, help=out_help)


def vae_main(argv: list[str]) -> int:
    from wmpo.train.vae import train_vae

    ap = argparse.ArgumentParser(prog="wmpo train-vae", description="train the per-frame VAE on task frames")
    _store_out(ap, "trajectory store path(s)", "output folder (vae.pt, config.json, tb/)")
    add_config_args(ap, "steps=2000 vae.frame_size=128")
    ap.add_argument("--steps", type=int, help="shorthand for --set steps=N")
    ap.add_argument("--batch-size", type=int, help="shorthand for --set batch_size=N")
    ap.add_argument("--frame-size", type=int, help="shorthand for --set vae.frame_size=N")
    ap.add_argument("--device")
    a = ap.parse_args(argv)
    flags = {"steps": a.steps, "batch_size": a.batch_size, "vae": {"frame_size": a.frame_size}}
    cfg = config_from_args(a, vae_preset, extra=given(flags))
    r = train_vae(cfg, a.store, a.out, device=a.device)
    print(json.dumps(r))
    return 0


def world_model_main(argv: list[str]) -> int:
    from wmpo.models.vae import FrameVAE
    from wmpo.train.world_model import train_world_model

    ap = argparse.ArgumentParser(prog="wmpo train-wm", description="pretrain / fine-tune the action-conditioned world model")
    _store_out(ap, "trajectory store path(s)", "output folder (world_model.pt, config.json, tb/)")
    ap.add_argument("--vae", required=True, help="vae.pt from `wmpo train-vae`")
    ap.add_argument("--init-from", help="world_model.pt to fine-tune from (policy behaviour alignment)")
    add_config_args(ap, "steps=2000 model.hidden=128")
    ap.add_argument("--steps", type=int, help="shorthand for --set steps=N")
    ap.add_argument("--batch-size", type=int, help="shorthand for --set batch_size=N")
    ap.add_argument("--device")
    a = ap.parse_args(argv)
    cfg = config_from_args(a, world_model_preset, extra=given({"steps": a.steps, "batch_size": a.batch_size}))
    vae = FrameVAE.from_checkpoint(a.vae)
    cfg.model.latent_channels, cfg.model.latent_size = vae.latent_channels, vae.latent_size
    r = train_world_model(cfg, a.store, a.out, vae=vae, init_from=a.init_from, device=a.device)
    print(json.dumps(r))
    return 0


def _resumable_command(argv, prog: str, description: str, store_help: str, out_help: str, example: str, preset, train, show):
    """A `train-*` command with --store/--out, the config args, --device and --no-resume."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    _store_out(ap, store_help, out_help)
    add_config_args(ap, example)
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--no-resume", action="store_true", help="start from scratch even if out/train_state.pt exists")
    a = ap.parse_args(argv)
    result = train(config_from_args(a, preset), a.store, a.out, device=a.device, resume=not a.no_resume)
    print(json.dumps(show(result), indent=2))
    return 0


def policy_main(argv: list[str] | None = None) -> int:
    from wmpo.train.policy import train_policy

    return _resumable_command(argv, "wmpo train-policy", "Behaviour cloning of the VLA policy on expert demos.",
                              "trajectory store path(s) with expert demos", "output folder (policy.pt, train_state.pt, config.json, tb/)",
                              "steps=100 policy.hidden_size=128", policy_preset, train_policy, lambda summary: summary)


def reward_main(argv: list[str] | None = None) -> int:
    from wmpo.train.reward import train_reward

    return _resumable_command(argv, "wmpo train-reward", "Train the VideoMAE success classifier on real trajectories.",
                              "trajectory store path(s) with successes and failures",
                              "output folder (reward.pt, metrics.json, config.json, tb/)", "steps=100 reward.hidden_size=128",
                              reward_preset, train_reward, lambda m: {"threshold": m["threshold"], "test": m["test"]})


def wm_eval_main(argv: list[str]) -> int:
    import torch

    from wmpo.data.loader import load_episodes
    from wmpo.models.vae import FrameVAE
    from wmpo.models.world_model import WorldModel
    from wmpo.train.wm_eval import evaluate_world_model
    from wmpo.utils.checkpoint import save_json
    from wmpo.utils.device import default_device

    ap = argparse.ArgumentParser(prog="wmpo wm-eval", description="world-model fidelity on held-out trajectories")
    _store_out(ap, "held-out trajectory store path(s)", "folder for metrics.json and mp4s")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="Euler steps")
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--device")
    a = ap.parse_args(argv)
    check_command_args(a)  # before any work
    device = torch.device(a.device) if a.device else default_device()
    wm = WorldModel.from_checkpoint(a.world_model).to(device).eval()
    if wm.action_stats is None:
        print(f"error: --world-model: {a.world_model} holds no action statistics (q01/q99) and has no action_stats.json "
              f"beside it; retrain it with this version of train-wm", file=sys.stderr)
        return 2
    eps, _ = load_episodes(a.store, limit=a.episodes)  # the stores' own stats are not the model's
    vae = FrameVAE.from_checkpoint(a.vae).to(device).eval()
    res = evaluate_world_model(vae, wm, eps, steps=a.steps, device=device, max_frames=a.max_frames,
                               video_dir=Path(a.out) / "videos")
    save_json(Path(a.out) / "metrics.json", res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("psnr", "ssim")}))
    return 0
