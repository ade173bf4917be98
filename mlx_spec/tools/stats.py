"""Small statistics shared by the benchmark and its peers: a mean with a 95% confidence interval."""

from __future__ import annotations

import math

import numpy as np

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval, Student's t); nan where undefined."""
    if not values:
        return float("nan"), float("nan")
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan")
    t = T95.get(len(values) - 1, 1.96)
    return mean, t * float(np.std(values, ddof=1)) / math.sqrt(len(values))
