"""KPOD's in-rationale progressive schedule (paper Sec. 3.4, Eqs. 9-13; docs/kpod-method.md section 4).

At stage t (one stage per epoch) question i gets its first c_i(t) rationale steps as input and the student
generates the rest. The schedule starts with only the last step generated (c_i(0) = n_i - 1), lets the total
difficulty grow along D(t) = u t^(p+1)/(p+1) + C0 (Eq. 10, D(T) = B = total difficulty), and at each stage
1 <= t < T chooses with FTGP which questions reveal `delta_s` more steps (Eqs. 11-13). From stage T on every
c_i = 0. Everything here is a pure function of numpy arrays; no model is involved.

    >>> steps = StepDifficulties.from_lists([[1.0, 2.0, 3.0], [0.5, 0.5], [4.0]])
    >>> sched = compute_schedule(steps.values, steps.n_steps, np.array([0, 1, 0]), num_stages=6)
    >>> sched.given_steps[0].tolist(), sched.given_steps[3].tolist()
    ([2, 1, 0], [0, 0, 0])

Choices where the paper is silent (all documented in the records):
* Stage t is epoch t + 1; stage 0 is the initial state, FTGP runs for t = 1..T-1, stages >= T are all zeros.
* C0 clamp: if C0 < sum_i h_i(0) (the last steps alone are harder than C0), C0 is raised to that sum and u is
  recomputed, so D(0) = sum_i h_i(0) and still D(T) = B (`c0_clamped` in the settings).
* Budget clamp: Delta_D(t) = max(0, D(t) - sum_i h_i(t-1)); the max only absorbs float rounding, because the
  realised difficulty never exceeds D(t-1) <= D(t). Delta_D <= 0 means nobody advances at that stage.
* zero_cost="exclude" (default): questions with c_i = 0 are not candidates; a candidate whose revealed steps have
  difficulty 0 is taken for free (it advances and costs nothing). "include": every question is a candidate and
  cost-0 ones (including c_i = 0) are taken for free and count in the diversity term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kpod.curriculum.ftgp import ZERO_COST_POLICIES, ftgp_select_detailed, set_cost


@dataclass(frozen=True)
class StepDifficulties:
    """Ragged per-step difficulties d_j^(i) of all rationales, stored flat.

    values: (total_steps,) float, question by question, steps in rationale order.
    n_steps: (N,) int, steps per question (sum = total_steps; 0 allowed).
    question: (total_steps,) int, the question each step belongs to; position: (total_steps,) 0-based step index.
    """

    values: np.ndarray
    n_steps: np.ndarray
    question: np.ndarray = field(repr=False)
    position: np.ndarray = field(repr=False)

    @classmethod
    def from_flat(cls, values, n_steps) -> "StepDifficulties":
        values = np.asarray(values, dtype=np.float64)
        n_steps = np.asarray(n_steps)
        if values.ndim != 1 or n_steps.ndim != 1:
            raise ValueError("values and n_steps must be 1-D")
        if n_steps.size and not np.issubdtype(n_steps.dtype, np.integer):
            raise ValueError(f"n_steps must be integers, got dtype {n_steps.dtype}")
        n_steps = n_steps.astype(np.int64)
        if np.any(n_steps < 0):
            raise ValueError("n_steps must be >= 0")
        if int(n_steps.sum()) != values.size:
            raise ValueError(f"sum(n_steps) = {int(n_steps.sum())} but there are {values.size} step values")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("step difficulties must be finite and >= 0")
        question = np.repeat(np.arange(n_steps.size), n_steps)
        starts = np.concatenate([[0], np.cumsum(n_steps)[:-1]]).astype(np.int64)
        position = np.arange(values.size) - np.repeat(starts, n_steps)
        return cls(values, n_steps, question, position)

    @classmethod
    def from_lists(cls, per_question: Sequence[Sequence[float]]) -> "StepDifficulties":
        arrays = [np.asarray(d, dtype=np.float64).ravel() for d in per_question]
        flat = np.concatenate(arrays) if arrays else np.zeros(0)
        return cls.from_flat(flat, np.array([len(d) for d in arrays], dtype=np.int64))

    @property
    def num_questions(self) -> int:
        return int(self.n_steps.size)

    def total(self) -> float:
        """B = sum_i sum_j d_j^(i)."""
        return math.fsum(self.values.tolist())

    def _per_question_sum(self, step_mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.question, weights=np.where(step_mask, self.values, 0.0), minlength=self.num_questions)

    def remaining(self, given: np.ndarray) -> np.ndarray:
        """h_i = sum_{j > c_i} d_j (Eq. 9): (N,) difficulty of the steps the student generates."""
        return self._per_question_sum(self.position >= given[self.question])

    def reveal_cost(self, given: np.ndarray, delta_s: int) -> np.ndarray:
        """Delta_H_i: (N,) increase of h_i if question i reveals delta_s more steps (steps max(c-ds,0)+1..c)."""
        c = given[self.question]
        return self._per_question_sum((self.position >= c - delta_s) & (self.position < c))


def initial_given_steps(n_steps) -> np.ndarray:
    """c_i(0) = n_i - 1 (only the last step is generated); 0 for a rationale without steps."""
    return np.maximum(np.asarray(n_steps, dtype=np.int64) - 1, 0)


def default_full_difficulty_stage(num_stages: int) -> int:
    """T = half the epochs (paper App. A), rounded down, at least 1."""
    return max(1, num_stages // 2)


def growth_rate(total: float, c0: float, p: float, T: int) -> float:
    """u = (B - C0)(p + 1) / T^(p + 1), so that D(T) = B."""
    return (total - c0) * (p + 1) / T ** (p + 1)


def difficulty_target(t, total: float, c0: float, p: float, T: int):
    """D(t) = u t^(p+1)/(p+1) + C0 (Eq. 10) for t < T and exactly B for t >= T. Scalar or array t."""
    u = growth_rate(total, c0, p, T)
    t_arr = np.asarray(t, dtype=np.float64)
    target = np.where(t_arr >= T, total, u * t_arr ** (p + 1) / (p + 1) + c0)
    return float(target) if target.ndim == 0 else target


def stage_budget(target: float, realised_previous: float) -> float:
    """Delta_D(t) = D(t) - sum_i h_i(t-1), clamped at 0 (see the module docstring)."""
    return max(0.0, target - realised_previous)


def _check_labels(clusters, n: int) -> np.ndarray:
    clusters = np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(f"clusters must have shape ({n},), got {clusters.shape}")
    if n and not np.issubdtype(clusters.dtype, np.integer):
        raise ValueError(f"cluster labels must be integers, got dtype {clusters.dtype}")
    return clusters


def advance_stage(
    steps: StepDifficulties,
    given: np.ndarray,
    clusters: np.ndarray,
    target: float,
    *,
    delta_s: int = 1,
    beta: float = 12.0,
    eps: float = 0.1,
    seed: int = 0,
    scan_order: str = "index",
    zero_cost: str = "exclude",
) -> tuple[np.ndarray, dict]:
    """One stage update t-1 -> t (Eqs. 11-13).

    given: (N,) int c_i(t-1); clusters: (N,) int; target: D(t). Returns c(t) and a JSON-ready record.
    """
    if zero_cost not in ZERO_COST_POLICIES:
        raise ValueError(f"zero_cost must be one of {ZERO_COST_POLICIES}, got {zero_cost!r}")
    if int(delta_s) != delta_s or delta_s < 1:
        raise ValueError(f"delta_s must be a positive integer, got {delta_s!r}")
    given = np.asarray(given, dtype=np.int64)
    clusters = _check_labels(clusters, steps.num_questions)
    realised_prev = math.fsum(steps.remaining(given).tolist())
    raw_budget = target - realised_prev
    budget = stage_budget(target, realised_prev)
    cost = steps.reveal_cost(given, delta_s)
    candidates = np.flatnonzero(given > 0) if zero_cost == "exclude" else np.arange(steps.num_questions)
    selected = np.zeros(steps.num_questions, dtype=bool)
    info = None
    if budget > 0 and candidates.size:
        info = ftgp_select_detailed(
            cost[candidates], clusters[candidates], budget, beta, eps, seed, zero_cost="include", scan_order=scan_order
        )
        selected[candidates[info.mask]] = True
    new_given = np.where(selected, np.maximum(given - delta_s, 0), given)

    labels, codes = np.unique(clusters, return_inverse=True)
    per_cluster = np.bincount(codes[selected], minlength=labels.size)
    increase = set_cost(cost, selected)
    diversity = beta * float(np.sqrt(per_cluster).sum())
    record = {
        "target_difficulty": float(target),
        "budget": budget,
        "budget_raw": float(raw_budget),
        "budget_clamped": bool(raw_budget != budget),
        "realised_previous": realised_prev,
        "realised_difficulty": math.fsum(steps.remaining(new_given).tolist()),
        "difficulty_increase": increase,
        "num_candidates": int(candidates.size),
        "num_too_costly": int(np.count_nonzero(cost[candidates] > budget)),
        "num_selected": int(selected.sum()),
        "num_selected_free": int(np.count_nonzero(cost[selected] == 0)),
        "selected_per_cluster": per_cluster.tolist(),
        "objective_F": -(budget - increase) + diversity,
        "objective_F_prime": increase + diversity,
        "ftgp_queries": info.queries if info else 0,
        "ftgp_thresholds": info.num_thresholds if info else 0,
        "ftgp_everything_fit": bool(info.everything_fit) if info else False,
    }
    return new_given, record


@dataclass
class Schedule:
    """given_steps: (num_stages, N) int, c_i(t); records: one JSON-ready dict per stage; settings: resolved values."""

    given_steps: np.ndarray
    records: list[dict]
    settings: dict

    def to_dict(self, include_given_steps: bool = False) -> dict:
        out = {"settings": self.settings, "records": self.records}
        if include_given_steps:
            out["given_steps"] = self.given_steps.tolist()
        return out


def _c_summary(given: np.ndarray) -> dict:
    return {
        "given_steps_histogram": np.bincount(given).tolist() if given.size else [],
        "given_steps_mean": float(given.mean()) if given.size else 0.0,
        "given_steps_max": int(given.max()) if given.size else 0,
    }


def compute_schedule(
    step_difficulties,
    n_steps,
    clusters,
    num_stages: int,
    *,
    c0_fraction: float = 0.3,
    p: float = 0.5,
    T: int | None = None,
    delta_s: int = 1,
    beta: float = 12.0,
    eps: float = 0.1,
    seed: int = 0,
    progressive: bool = True,
    scan_order: str = "index",
    zero_cost: str = "exclude",
) -> Schedule:
    """The whole schedule, stages 0..num_stages-1.

    step_difficulties: (total_steps,) flat float d_j (see `StepDifficulties`); n_steps: (N,) int; clusters: (N,) int.
    c0_fraction: C0 / B in [0, 1]; p > -1 (growth exponent); T: stage of full difficulty (default num_stages // 2).
    progressive=False is the w.o.-prog ablation (c = 0 at every stage); beta = 0 is w.o.-div.
    Stage t uses scan seed `seed + t`. The same inputs give the identical schedule.
    """
    steps = StepDifficulties.from_flat(step_difficulties, n_steps)
    clusters = _check_labels(clusters, steps.num_questions)
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    T = default_full_difficulty_stage(num_stages) if T is None else int(T)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if not 0.0 <= c0_fraction <= 1.0:
        raise ValueError(f"c0_fraction must lie in [0, 1], got {c0_fraction}")
    if not p > -1:
        raise ValueError(f"p must be > -1, got {p}")
    if zero_cost not in ZERO_COST_POLICIES:
        raise ValueError(f"zero_cost must be one of {ZERO_COST_POLICIES}, got {zero_cost!r}")
    if int(delta_s) != delta_s or delta_s < 1:
        raise ValueError(f"delta_s must be a positive integer, got {delta_s!r}")
    n = steps.num_questions
    total = steps.total()
    given = initial_given_steps(steps.n_steps) if progressive else np.zeros(n, dtype=np.int64)
    initial_sum = math.fsum(steps.remaining(given).tolist())
    c0 = max(c0_fraction * total, initial_sum) if progressive else total
    settings = {
        "num_stages": num_stages,
        "T": T,
        "c0_fraction": c0_fraction,
        "p": p,
        "delta_s": delta_s,
        "beta": beta,
        "eps": eps,
        "seed": seed,
        "progressive": progressive,
        "scan_order": scan_order,
        "zero_cost": zero_cost,
        "num_questions": n,
        "total_difficulty": total,
        "initial_difficulty": initial_sum,
        "c0": c0,
        "c0_clamped": bool(progressive and c0 > c0_fraction * total),
        "growth_rate_u": growth_rate(total, c0, p, T),
        "cluster_labels": np.unique(clusters).tolist(),
    }
    rows, records = [], []
    for t in range(num_stages):
        target = difficulty_target(t, total, c0, p, T)
        if not progressive or t >= T:
            phase = "full" if progressive else "no_progression"
            given = np.zeros(n, dtype=np.int64)
            record = {"target_difficulty": target, "realised_difficulty": total}
        elif t == 0:
            phase = "initial"
            record = {"target_difficulty": target, "realised_difficulty": initial_sum}
        else:
            phase = "ftgp"
            given, record = advance_stage(
                steps, given, clusters, target, delta_s=delta_s, beta=beta, eps=eps, seed=seed + t,
                scan_order=scan_order, zero_cost=zero_cost,
            )
        rows.append(given.copy())
        records.append({"stage": t, "phase": phase, **record, **_c_summary(given)})
    return Schedule(np.stack(rows) if rows else np.zeros((0, n), np.int64), records, settings)
