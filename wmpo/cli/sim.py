"""`wmpo collect`, `wmpo eval` and `wmpo corpus`."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from wmpo.utils.arg_checks import (argtype, check_input_file, check_output_dir, check_output_file, device_arg,
                                   int_at_least, positive_float)


def load_env_policy(policy: str, temperature: float | None = None, device: str | None = None):
    """'expert' | 'random' | a policy checkpoint path -> what collect()/evaluate() accept."""
    if policy == "expert":
        return "expert"
    if policy != "random":
        check_input_file(policy, "--policy")  # before the heavy imports
    if policy == "random":
        rng = np.random.default_rng(0)

        def random_policy(frames, instructions):
            return rng.uniform(-1, 1, size=(len(frames), 8, 7))

        return random_policy
    from wmpo.models.policy import as_env_policy, load_policy

    model, tokenizer = load_policy(policy, device=device or "cpu")
    return as_env_policy(model, tokenizer, temperature=temperature, device=device)


def _common(p: argparse.ArgumentParser) -> None:
    from wmpo.sim.tasks import TASK_MODULES

    p.add_argument("--task", required=True, choices=sorted(TASK_MODULES))
    p.add_argument("--policy", default="expert", help="'expert', 'random' or a policy checkpoint (.pt)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="simulator worker processes")
    p.add_argument("--image-size", type=int_at_least(8), default=64)
    p.add_argument("--temperature", type=positive_float, default=None, help="policy sampling temperature (None: greedy)")
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--max-steps", type=int_at_least(1), default=None, help="cap episodes below the task horizon")


def collect_main(argv: list[str]) -> int:
    from wmpo.data.store import TrajectoryStore
    from wmpo.sim.collect import collect

    p = argparse.ArgumentParser(prog="wmpo collect", description="collect episodes into an HDF5 trajectory store "
                                "(a re-run into the same --out resumes: starts already stored are skipped)")
    _common(p)
    p.add_argument("--episodes", type=int_at_least(1), default=None, help="number of episodes from D0 seeds seed, seed+1, ...")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--split", choices=["train", "eval"], default=None,
                   help="start from this split's initial states instead of D0 seeds (--episodes of them)")
    p.add_argument("--only-successes", action="store_true", help="do not write failed episodes")
    p.add_argument("--no-resume", action="store_true",
                   help="run starts that the store already holds again (e.g. another policy from the same seeds)")
    p.add_argument("--out", required=True, type=argtype(check_output_file),
                   help="store path (appended to if it exists; one writer at a time)")
    a = p.parse_args(argv)
    if a.split is None and a.episodes is None:
        p.error("--episodes is required (or --split)")
    policy = load_env_policy(a.policy, a.temperature, a.device)
    init_states = None
    if a.split is not None:
        from wmpo.sim.initial_states import get_initial_states

        init_states = get_initial_states(a.task, a.split, a.episodes or 128)
    with TrajectoryStore(a.out, "a") as store:
        r = collect(policy, a.task, store, init_states=init_states, n_episodes=a.episodes, seed=a.seed,
                    num_workers=a.workers, image_size=a.image_size, only_successes=a.only_successes,
                    max_steps=a.max_steps, resume=not a.no_resume)
    skipped = f" ({r.skipped} already stored, skipped)" if r.skipped else ""
    print(f"{r.episodes} episodes{skipped}, {r.successes} successes ({r.success_rate:.3f}), {r.env_steps} steps in "
          f"{r.seconds:.1f}s ({r.steps_per_second:.1f} steps/s) -> {a.out}")
    return 0


def eval_main(argv: list[str]) -> int:
    from wmpo.sim.evaluate import evaluate

    p = argparse.ArgumentParser(prog="wmpo eval", description="success rate on the evaluation initial states")
    _common(p)
    p.add_argument("--split", choices=["train", "eval"], default="eval")
    p.add_argument("--states-seed", type=int_at_least(0), default=None, metavar="S",
                   help="instead of --split: a fresh set of initial states drawn with seed S (disjoint from the "
                        "training states, checked), so a policy can be re-evaluated on states nobody tuned on")
    p.add_argument("-n", "--episodes", type=int_at_least(1), default=128)
    p.add_argument("--video-dir", type=argtype(check_output_dir), default=None)
    p.add_argument("--videos", type=int_at_least(0), default=4)
    p.add_argument("--json", type=argtype(check_output_file), default=None, help="also write the result as JSON here")
    from wmpo.sim.tasks import DISRUPTIONS

    p.add_argument("--disruption", choices=sorted(DISRUPTIONS), default=None,
                   help="evaluate on this variant of the task from the same initial states (the paper's Table 2: "
                        + ", ".join(f"{d} for {t}" for d, t in DISRUPTIONS.items()) + ")")
    a = p.parse_args(argv)
    if a.disruption is not None:
        from wmpo.sim.tasks import get_task

        try:
            get_task(a.task, disruption=a.disruption)
        except ValueError as e:
            p.error(f"--{e}")
    policy = load_env_policy(a.policy, a.temperature, a.device)
    init_states, split = None, a.split
    if a.states_seed is not None:
        from wmpo.sim.initial_states import fresh_initial_states

        init_states, split = fresh_initial_states(a.task, a.states_seed, a.episodes), f"fresh-{a.states_seed}"
    r = evaluate(policy, a.task, split=split, n=a.episodes, num_workers=a.workers, image_size=a.image_size,
                 video_dir=a.video_dir, n_videos=a.videos, max_steps=a.max_steps, init_states=init_states,
                 disruption=a.disruption)
    print(r.summary())
    if a.json:
        from dataclasses import asdict

        from wmpo.utils.checkpoint import save_json

        save_json(a.json, asdict(r))
    return 0


if __name__ == "__main__":
    sys.exit(eval_main(sys.argv[1:]))


def corpus_main(argv: list[str]) -> int:
    from pathlib import Path

    from wmpo.sim.corpus import CorpusConfig, collect_corpus
    from wmpo.sim.expert_noise import ExpertNoise

    p = argparse.ArgumentParser(prog="wmpo corpus", description="collect the world-model pretraining corpus "
                                "(perturbed scripted experts, several tasks; resumable)")
    p.add_argument("--out", required=True, help="corpus folder (one store per task)")
    p.add_argument("--tasks", nargs="+", default=list(CorpusConfig.tasks))
    p.add_argument("--episodes-per-task", type=int, default=CorpusConfig.episodes_per_task)
    p.add_argument("--image-size", type=int, default=CorpusConfig.image_size)
    p.add_argument("--round-size", type=int, default=CorpusConfig.round_size)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clean-fraction", type=float, default=ExpertNoise.clean_fraction)
    p.add_argument("--seed-base", type=int, default=CorpusConfig.seed_base,
                   help="episode i of a task starts from D0 seed SEED_BASE + i (a fresh slice: a new base, e.g. +100000 per machine)")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers: expected >= 1, got {a.workers}")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a folder")
    if a.seed_base < CorpusConfig.seed_base:
        p.error(f"--seed-base: expected >= {CorpusConfig.seed_base} (below it the corpus would share D0 seeds with the "
                f"training / evaluation initial states), got {a.seed_base}")
    cfg = CorpusConfig(tasks=tuple(a.tasks), episodes_per_task=a.episodes_per_task, image_size=a.image_size,
                       round_size=a.round_size, noise=ExpertNoise(clean_fraction=a.clean_fraction), seed_base=a.seed_base)
    counts = collect_corpus(out, cfg, num_workers=a.workers)
    for task, c in counts.items():
        print(f"{task}: {c['episodes']} episodes, {c['successes']} successes")
    return 0
