"""The statistics of a report: mean and spread over seeds, intervals for a difference of accuracies (unpaired and
question by question), a paired permutation test, and a one-way ANOVA over training runs."""

from __future__ import annotations

import math

import numpy as np


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value; None for none)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p over n trials (stays inside [0, 1], sound near 0)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def difference_interval(p_a: float, n_a: int, p_b: float, n_b: int, z: float = 1.96) -> tuple[float, float, float]:
    """A's accuracy minus B's, in points, with Newcombe's hybrid score interval (his method 10: Wilson intervals of
    each proportion combined), which keeps its coverage at accuracies near 0 where the plain normal one does not.
    n is the number of distinct test questions: every seed answers the same ones, so seeds do not count as more
    questions (the interval stays wide enough when they agree); the spread between training runs comes on top."""
    lo_a, hi_a = wilson_interval(p_a, n_a, z)
    lo_b, hi_b = wilson_interval(p_b, n_b, z)
    diff = p_a - p_b
    low = diff - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2)
    high = diff + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2)
    return 100 * diff, 100 * low, 100 * high


def paired_difference_interval(a: np.ndarray, b: np.ndarray, z: float = 1.96) -> tuple[float, float, float, int]:
    """A's accuracy minus B's, in points, from the same test questions answered by both: the mean of the per-question
    differences with a normal interval from their standard error (questions are the sampled unit, each one's answers
    averaged over seeds first). Pairing removes what both methods share (questions both get right or both miss), so
    it is narrower than an interval between two independent samples when the methods agree on most questions.
    Approximate when few questions differ. Also returns how many questions the two score differently."""
    d = a - b
    se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    diff = float(d.mean())
    return 100 * diff, 100 * (diff - z * se), 100 * (diff + z * se), int(np.count_nonzero(d))


def format_p(p: float) -> str:
    """A p value to three decimals; below 0.001 as such (a permutation test's or an ANOVA's p is never 0). Just
    below 0.05 it keeps a fourth decimal, so that a p that passes the 0.05 verdict never prints as 0.050."""
    if p < 0.001:
        return "< 0.001"
    return f"{p:.4f}" if 0.0495 <= p < 0.05 else f"{p:.3f}"


def sign_flip_p(a: np.ndarray, b: np.ndarray, resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p of a paired permutation test: if the two methods did not differ, each question's difference would
    be as likely with either sign. Exact (every sign pattern) for up to 16 questions scored differently, else from
    `resamples` seeded draws. Unlike the normal interval, it stays sound when only a handful of questions differ
    (4 of 4 in one method's favour: p = 0.125)."""
    d = (a - b)[a != b]
    if d.size == 0:
        return 1.0
    observed = abs(float(d.sum())) - 1e-9  # differences are multiples of 1/seeds: guard the ties against rounding
    if d.size <= 16:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed))
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, resamples, 10_000):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(10_000, resamples - start), d.size))
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed))
    return (hits + 1) / (resamples + 1)


def one_way_anova(groups: list) -> dict:
    """One-way ANOVA over groups of values (here: each method's per-seed accuracies, every one a training run), each
    of two values or more: the pooled within-group standard deviation, F with its degrees of freedom, and p, the
    chance of an F this large if the groups' means did not differ (approximate: it assumes normal, equal spreads).
    F and p are None when every group is constant."""
    from scipy.stats import f as f_distribution

    values = [np.asarray(v, dtype=np.float64) for v in groups]
    within_ss = sum(float(((v - v.mean()) ** 2).sum()) for v in values)
    within_df = sum(len(v) - 1 for v in values)
    grand = np.concatenate(values).mean()
    between_ss = sum(len(v) * float((v.mean() - grand) ** 2) for v in values)
    between_df = len(values) - 1
    f_value = p_value = None
    if within_ss > 0:
        f_value = (between_ss / between_df) / (within_ss / within_df)
        p_value = float(f_distribution.sf(f_value, between_df, within_df))
    return {"within_std": math.sqrt(within_ss / within_df), "f": f_value, "p": p_value, "df": [between_df, within_df]}
