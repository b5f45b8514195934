"""The stages and the pacing function the curriculum variants share, aligned with KPOD's schedule: the same number
of stages (`kpod.stages`, default one per epoch), each stage a fixed share of the optimiser steps, and a linear pace
from `curricula.start_fraction` at stage 0 to everything at stage T (default: KPOD's T, half the stages).

    >>> linear_pacing(num_stages=6, start_fraction=0.4, full_stage=3).round(2).tolist()
    [0.4, 0.6, 0.8, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math

import numpy as np

from kpod.config import RunConfig
from kpod.curriculum.schedule import default_full_difficulty_stage
from kpod.curriculum.stages import num_stages


def linear_pacing(num_stages: int, start_fraction: float, full_stage: int) -> np.ndarray:
    """g(t) = start + (1 - start) * min(1, t / T) for t = 0..num_stages-1: (num_stages,) in (0, 1]."""
    if num_stages < 1 or full_stage < 1:
        raise ValueError(f"need num_stages >= 1 and full_stage >= 1, got {num_stages}, {full_stage}")
    if not 0 < start_fraction <= 1:
        raise ValueError(f"start_fraction must be in (0, 1], got {start_fraction}")
    t = np.arange(num_stages, dtype=np.float64)
    return start_fraction + (1 - start_fraction) * np.minimum(1.0, t / full_stage)


def curriculum_pacing(cfg: RunConfig) -> np.ndarray:
    """The run's fractions per stage: (num_stages,)."""
    stages = num_stages(cfg)
    full = cfg.curricula.full_stage or cfg.kpod.full_difficulty_stage or default_full_difficulty_stage(stages)
    return linear_pacing(stages, cfg.curricula.start_fraction, full)


def kth_smallest(values: np.ndarray, fraction: float) -> float:
    """The value below or at which the easiest `fraction` of `values` lies (the ceil(fraction * N)-th smallest);
    +inf when fraction >= 1 (everything)."""
    if fraction >= 1 or len(values) == 0:
        return math.inf
    k = max(1, math.ceil(fraction * len(values)))
    return float(np.partition(values, k - 1)[k - 1])
