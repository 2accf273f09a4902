"""Trajectories: the Episode record and the HDF5 trajectory store."""
from wmpo.data.episode import Episode
from wmpo.data.store import StoreFormatError, TrajectoryStore

__all__ = ["Episode", "StoreFormatError", "TrajectoryStore"]
