"""Small statistics for noisy samples: medians and nearest-rank percentiles."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with n samples p99 is the max when n < 100."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[rank - 1])


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def summary(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "median": median(values),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


def rnd(x: float, digits: int = 3) -> float:
    return round(x, digits) if math.isfinite(x) else x
