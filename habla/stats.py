"""Intervals for the evaluation figures: a percentile bootstrap over items, and Wilson's for a share of answers.

Numpy only, so the text-metric stages and `habla blind` use it without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def bootstrap_interval(
    n: int, statistic: Callable[[np.ndarray], float], resamples: int, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap over items (conversations, prompts): resample indices with replacement."""
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a share: unlike the bootstrap it stays inside [0, 1] and says something
    sensible with a handful of answers (a person who got 3 of 3 right is not right 100% ± 0% of the time)."""
    if trials == 0:
        return (math.nan, math.nan)
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
