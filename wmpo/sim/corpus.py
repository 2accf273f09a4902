"""The world-model pretraining corpus: perturbed scripted-expert episodes of several tasks.

In the paper, the world model is pretrained on Open X-Embodiment before it is aligned with the
policy's behaviour; those trajectories are not the policy's and do not count against the real
budget P. Here a corpus folder holds one trajectory store per task (`<task>.h5`), filled from D0
seeds `seed_base + i` (disjoint from the train / eval initial-state seeds) by the task's scripted
expert with per-episode perturbations (`wmpo.sim.expert_noise`), so it shows successes, near misses,
drops and collisions.

Collection is resumable and balanced: it runs in rounds, each adding up to `round_size` episodes
to every task that has fewer than asked; seeds already stored (read from the episodes' meta) are
never run again, so a killed collection continues where it stopped without duplicates.
`corpus.json` in the folder records the configuration and the counts after every round.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from wmpo.sim.expert_noise import ExpertNoise

CORPUS_SEED_BASE = 3_000_000
"""first D0 seed of the corpus (train initial states start at 1e6, eval at 2e6)"""


@dataclass
class CorpusConfig:
    tasks: tuple[str, ...] = ("square", "stack_three", "three_piece_assembly", "coffee")
    """tasks in the corpus, one store each"""
    episodes_per_task: int = 250
    """target number of episodes per task"""
    image_size: int = 64
    """rendered frame size"""
    seed_base: int = CORPUS_SEED_BASE
    """episode i of a task starts from D0 seed seed_base + i"""
    noise: ExpertNoise = field(default_factory=ExpertNoise)
    """per-episode perturbation ranges of the scripted expert"""
    round_size: int = 20
    """episodes added per task per round (keeps a partial corpus balanced across tasks)"""
    max_steps: int | None = None
    """cap on episode length (None: each task's horizon; smoke-test presets shorten it)"""


def corpus_store_path(folder: str | Path, task: str) -> Path:
    return Path(folder) / f"{task}.h5"


def stored_seeds(path: str | Path) -> list[int]:
    """D0 seeds of the episodes in the store at `path` (empty when there is none), from their meta."""
    from wmpo.data.store import TrajectoryStore

    path = Path(path)
    if not path.exists():
        return []
    with TrajectoryStore(path, "r") as store:
        return store.stored_seeds()


def corpus_counts(folder: str | Path, tasks: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per task: episodes and successes stored so far."""
    from wmpo.data.store import TrajectoryStore

    out = {}
    for task in tasks:
        path = corpus_store_path(folder, task)
        succ: list[bool] = []
        if path.exists():
            with TrajectoryStore(path, "r") as store:
                succ = store.successes()
        out[task] = {"episodes": len(succ), "successes": int(sum(succ))}
    return out


def _write_manifest(folder: Path, cfg: CorpusConfig, extra: dict) -> None:
    from wmpo.utils.checkpoint import save_json

    d = asdict(cfg)
    d["noise"] = cfg.noise.to_dict()
    save_json(folder / "corpus.json", {"config": d, **extra})


def collect_corpus(folder: str | Path, cfg: CorpusConfig, num_workers: int = 2, show_progress: bool = True,
                   max_rounds: int | None = None) -> dict[str, dict[str, int]]:
    """Fill `folder` up to `cfg.episodes_per_task` episodes per task (resumable); -> counts."""
    from wmpo.sim.collect import collect
    from wmpo.sim.tasks import get_task

    for task in cfg.tasks:
        get_task(task)  # validates every name before any work
    if cfg.episodes_per_task < 1 or cfg.round_size < 1:
        raise ValueError(f"episodes_per_task / round_size: expected >= 1, got {cfg.episodes_per_task} / {cfg.round_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        work = {}
        for task in cfg.tasks:
            have = set(stored_seeds(corpus_store_path(folder, task)))
            missing = [cfg.seed_base + i for i in range(cfg.episodes_per_task) if cfg.seed_base + i not in have]
            if missing:
                work[task] = missing[: cfg.round_size]
        if not work:
            break
        for task, seeds in work.items():
            r = collect("expert", task, corpus_store_path(folder, task), seeds=seeds, num_workers=num_workers,
                        image_size=cfg.image_size, expert_noise=cfg.noise, show_progress=show_progress,
                        max_steps=cfg.max_steps)
            if show_progress:
                print(f"corpus {task}: +{r.episodes} episodes ({r.successes} successes) in {r.seconds:.0f} s", flush=True)
        rounds += 1
        _write_manifest(folder, cfg, {"counts": corpus_counts(folder, cfg.tasks), "last_round_wall_s": time.time() - t0})
    counts = corpus_counts(folder, cfg.tasks)
    _write_manifest(folder, cfg, {"counts": counts})
    return counts
