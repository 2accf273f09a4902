"""Warnings that fire once, TensorBoard scalars under stable keys, progress bars."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Emit `message` loudly (warnings + stderr) the first time `key` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class ScalarLogger:
    """TensorBoard SummaryWriter wrapper; a no-op when log_dir is None."""

    def __init__(self, log_dir: str | os.PathLike | None):
        self._w = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._w = SummaryWriter(str(log_dir))

    def scalar(self, key: str, value: float, step: int) -> None:
        if self._w is not None:
            self._w.add_scalar(key, float(value), step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.scalar(k, v, step)

    def flush(self) -> None:
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


def progress(it: Iterable[T], total: int | None = None, desc: str = "", disable: bool | None = None) -> Iterator[T]:
    """A tqdm progress bar (disabled when WMPO_NO_PROGRESS=1 or stderr is not a terminal and CI is set)."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = os.environ.get("WMPO_NO_PROGRESS") == "1" or (os.environ.get("CI") == "true" and not sys.stderr.isatty())
    return iter(tqdm(it, total=total, desc=desc, disable=disable, dynamic_ncols=True))
