"""Small helpers shared by the evaluation modules: means with standard errors, host copies of
arrays of any backend."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["mean_and_stderr", "to_numpy"]


def mean_and_stderr(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy of an array of any backend (NumPy, CuPy, torch), without importing one."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)
