"""Plain JSON values from what stages return (dataclasses, numpy, tensors, paths)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch


def jsonable(x: Any) -> Any:
    """`x` with dataclasses, numpy scalars/arrays, tensors and paths turned into JSON values (others: str)."""
    if hasattr(x, "__dataclass_fields__"):
        x = asdict(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
