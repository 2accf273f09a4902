"""The `wmpo` command. Every subcommand's argument parsing lives in this package (wmpo.cli.*) as
`main(argv) -> int`; the library modules it calls import no CLI and no preset."""
from __future__ import annotations

import importlib
import os
import sys

# subcommand -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("wmpo.cli.sim:collect_main", "collect episodes in the real simulator into an HDF5 store"),
    "eval": ("wmpo.cli.sim:eval_main", "evaluate a policy in the real simulator on the evaluation initial states"),
    "corpus": ("wmpo.cli.sim:corpus_main", "collect the world-model pretraining corpus (perturbed experts, several tasks)"),
    "train-vae": ("wmpo.cli.train:vae_main", "train the per-frame VAE on task frames"),
    "train-wm": ("wmpo.cli.train:world_model_main", "pretrain / fine-tune the action-conditioned video world model"),
    "distill-wm": ("wmpo.cli.distill:main", "distil a world model into a few-step student (1, 2, 4 Euler steps)"),
    "wm-eval": ("wmpo.cli.train:wm_eval_main", "world-model fidelity: replay real actions, PSNR/SSIM vs horizon, mp4"),
    "train-policy": ("wmpo.cli.train:policy_main", "behaviour cloning of the VLA policy on expert demos"),
    "train-reward": ("wmpo.cli.train:reward_main", "train the VideoMAE success classifier"),
    "import": ("wmpo.cli.data:import_main", "import robomimic / LeRobot-style HDF5 episodes into a new trajectory store"),
    "export": ("wmpo.cli.data:export_main", "write a trajectory store as one self-contained HDF5 file (--single-file)"),
    "run": ("wmpo.cli.run:main", "the whole WMPO pipeline for one task and preset, resumable stage by stage"),
    "bench": ("wmpo.cli.bench:main", "imagined frames/s (median, spread, MFU) of a preset, a run's models or your own world model"),
}


# optional packages (pip install "wmpo[full]"), by import name -> pip name
EXTRAS = {"h5py": "h5py", "robosuite": "robosuite", "mujoco": "mujoco", "diffusers": "diffusers",
          "transformers": "transformers", "tensorboard": "tensorboard", "rich": "rich", "tqdm": "tqdm",
          "imageio": "imageio", "imageio_ffmpeg": "imageio-ffmpeg", "onnx": "onnx", "onnxruntime": "onnxruntime",
          "matplotlib": "matplotlib", "triton": "triton"}


def missing_extra(e: ModuleNotFoundError) -> str:
    """The pip name of the optional package `e` is about, or '' when it is not one."""
    top = (e.name or "").split(".")[0]
    return EXTRAS.get(top, "")


def _usage() -> str:
    lines = ["usage: wmpo <command> [options]", "", "commands:"]
    lines += [f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`wmpo <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("WMPO_QUIET_ROBOSUITE", "1")  # robosuite's start-up warnings, once per worker (wmpo.sim)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"wmpo: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    mod_name, fn_name = COMMANDS[cmd][0].split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
        return int(fn(rest) or 0)
    except ModuleNotFoundError as e:
        # an optional package this command needs (a plain `pip install wmpo` has only numpy + torch)
        if not missing_extra(e) or os.environ.get("WMPO_DEBUG"):
            raise
        print(f"wmpo {cmd}: error: this command needs the optional package '{missing_extra(e)}', which is not "
              "installed: pip install \"wmpo[full]\" (all optional packages) or pip install "
              f"{missing_extra(e)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        # bad input (a value, a path, a damaged file, a store another writer holds): one line naming
        # what is wrong, exit 2 (WMPO_DEBUG=1 for the traceback)
        if os.environ.get("WMPO_DEBUG"):
            raise
        print(f"wmpo {cmd}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("WMPO_DEBUG"):
            raise
        print(f"wmpo {cmd}: interrupted (rerun the same command to resume where it can)", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg


if __name__ == "__main__":
    sys.exit(main())
