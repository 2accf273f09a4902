"""Trajectories: the Episode record and the HDF5 trajectory store (the ground floor), the one
episode loader and action statistics (loader.py), the TrajectoryBatch handed to the policy updates
(batch.py), GRPO groups (groups.py) and the training datasets (clips.py)."""
from wmpo.data.episode import Episode
from wmpo.data.store import StoreFormatError, TrajectoryStore

__all__ = ["Episode", "StoreFormatError", "TrajectoryStore"]
