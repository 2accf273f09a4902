"""Perturbed scripted experts: diverse, partly failing trajectories for world-model pretraining.

The paper pretrains its world model on Open X-Embodiment: many trajectories that are not the
policy's. Here that role is played by the tasks' scripted experts with injected noise, so the
corpus also shows what a world model must learn and clean demonstrations never show: missed
grasps, drops, collisions, recoveries. Per episode, a noise *level* is drawn; per step, the expert's
action is perturbed by

- Gaussian noise on the six pose dimensions (std `sigma`, in normalized action units),
- random *bursts*: with probability `burst_prob` per step, `burst_len` steps of uniform random pose
  actions (the expert's feedback then pulls the arm back, or the phase times out and it fails),
- gripper *slips*: with probability `slip_prob` per step, the gripper command is inverted for
  `slip_len` steps (drops what it holds, or closes early).

All randomness comes from a generator seeded by the episode's seed, so an episode is reproducible
from (seed, noise config) alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ExpertNoise:
    """Ranges from which each episode's perturbation level is drawn."""

    clean_fraction: float = 0.2
    """share of episodes run without any perturbation"""
    sigma: tuple[float, float] = (0.03, 0.3)
    """per-episode std of Gaussian pose noise, drawn uniformly from this range"""
    burst_prob: tuple[float, float] = (0.0, 0.03)
    """per-episode probability per step of starting a random-action burst (uniform in range)"""
    burst_len: tuple[int, int] = (3, 15)
    """burst length in steps (uniform integers, inclusive)"""
    slip_prob: tuple[float, float] = (0.0, 0.01)
    """per-episode probability per step of a gripper slip (uniform in range)"""
    slip_len: tuple[int, int] = (3, 12)
    """slip length in steps (uniform integers, inclusive)"""

    def __post_init__(self) -> None:
        if not 0.0 <= self.clean_fraction <= 1.0:
            raise ValueError(f"clean_fraction: expected in [0, 1], got {self.clean_fraction}")
        for name in ("sigma", "burst_prob", "slip_prob", "burst_len", "slip_len"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi) or not np.isfinite(hi):
                raise ValueError(f"{name}: expected 0 <= low <= high, got ({lo}, {hi})")
        for name in ("burst_prob", "slip_prob"):
            if getattr(self, name)[1] > 1:
                raise ValueError(f"{name}: probabilities must be <= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ExpertNoise":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class ActionPerturber:
    """One episode's perturbation: `level` holds what was drawn (saved with the episode)."""

    def __init__(self, noise: ExpertNoise, seed: int):
        self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
        rng = self.rng
        clean = rng.random() < noise.clean_fraction
        self.level = {
            "clean": bool(clean),
            "sigma": 0.0 if clean else float(rng.uniform(*noise.sigma)),
            "burst_prob": 0.0 if clean else float(rng.uniform(*noise.burst_prob)),
            "slip_prob": 0.0 if clean else float(rng.uniform(*noise.slip_prob)),
        }
        self.noise = noise
        self._burst_left = 0
        self._burst_action = np.zeros(6)
        self._slip_left = 0
        self.bursts = 0
        self.slips = 0

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """Expert action float [7] -> perturbed action, clipped to [-1, 1]."""
        a = np.asarray(action, dtype=np.float64).copy()
        if self.level["clean"]:
            return a
        rng, lv, nz = self.rng, self.level, self.noise
        if self._burst_left == 0 and rng.random() < lv["burst_prob"]:
            self._burst_left = int(rng.integers(nz.burst_len[0], nz.burst_len[1] + 1))
            self._burst_action = rng.uniform(-1, 1, size=6)
            self.bursts += 1
        if self._slip_left == 0 and rng.random() < lv["slip_prob"]:
            self._slip_left = int(rng.integers(nz.slip_len[0], nz.slip_len[1] + 1))
            self.slips += 1
        if self._burst_left > 0:
            a[:6] = self._burst_action
            self._burst_left -= 1
        a[:6] += rng.normal(0.0, lv["sigma"], size=6) if lv["sigma"] > 0 else 0.0
        if self._slip_left > 0:
            a[6] = -a[6] if a[6] != 0 else 1.0
            self._slip_left -= 1
        return np.clip(a, -1.0, 1.0)

    def summary(self) -> dict:
        return {**self.level, "bursts": self.bursts, "slips": self.slips}
