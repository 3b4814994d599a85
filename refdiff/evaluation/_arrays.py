"""Means with standard errors, shared by the evaluation modules."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_and_stderr"]


def mean_and_stderr(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se
