"""FTGP: (1/2 - eps)-approximate monotone submodular maximisation under one knapsack constraint.

KPOD (Sec. 3.4, Eq. 13) picks, at every stage, the questions that reveal one more rationale step by maximising
F'(S) = sum_{i in S} a_i + beta * sum_k sqrt(|C_k & S|) subject to sum_{i in S} a_i <= budget, with FTGP
(Li, Feldman, Kazemi, Karbasi, NeurIPS 2022). This module implements the reconstruction written down in
`docs/ftgp.md` section 2 (three phases: a linear-time estimate of OPT, a decreasing-threshold density greedy
over a range of constant width, and a "plus" step that tries every leftover element on top of the right prefix).

Entry points:

* `ftgp(marginal_fn, costs, budget, eps, order)`: the generic value-oracle algorithm for any normalised monotone
  submodular f given as marginal gains `marginal_fn(u, S) = f(S + u) - f(S)`; it counts its queries.
* `ftgp_select(cost, cluster, budget, beta, eps, ...)`: KPOD's F' (docs/ftgp.md section 3). Its passes
  (`ftgp_kernels.py`) run in numba when numba can be imported and otherwise in plain Python; both give the
  identical set, which is also the set `ftgp` returns with `kpod_gain_oracle`. `ftgp_select_detailed` returns the set with its diagnostics.

    >>> import numpy as np
    >>> sel = ftgp_select(np.array([3.0, 1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]), budget=4.0, beta=1.0)
    >>> sel.tolist()
    [False, True, True, True]

Costs are compared with `<=` on float64. The phases add costs one by one in the order elements are taken; the
returned set is finally checked with `math.fsum` (the correctly rounded sum, independent of order), and the
elements added last are removed should that check fail, which can only happen within rounding of the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from kpod.curriculum import ftgp_kernels
from kpod.curriculum.ftgp_kernels import numba_available  # noqa: F401  (re-exported)

# OPT <= ALPHA * Gamma for the phase-1 estimate Gamma (docs/ftgp.md section 2.1).
ALPHA = 7.0
ZERO_COST_POLICIES = ("exclude", "include")
SCAN_ORDERS = ("index", "permuted")
BACKENDS = ("auto", "numba", "python")

MarginalFn = Callable[[int, tuple], float]


@dataclass(frozen=True)
class FtgpResult:
    """Outcome of one FTGP run.

    selected: indices, zero-cost elements first, then in the order the algorithm added them.
    value: f(selected) - f(zero-cost part), i.e. the value of the contracted problem (docs/ftgp.md section 2.0);
    NaN when everything fit, since then no query is made.
    queries: number of marginal-gain evaluations. num_thresholds: passes planned for phase 2.
    gamma: the phase-1 estimate (OPT in [gamma, ALPHA * gamma]). guard_drops: elements removed by the final
    `math.fsum` budget check (0 unless the running sum and the exact sum disagree at the budget).
    """

    selected: np.ndarray
    value: float
    queries: int
    num_thresholds: int = 0
    gamma: float = 0.0
    everything_fit: bool = False
    guard_drops: int = 0


@dataclass(frozen=True)
class KpodSelection:
    """`ftgp_select_detailed` output: the selection and what a stage inspector wants to know about it."""

    mask: np.ndarray  # (n,) bool
    objective: float  # F'(S) = sum a_S + beta * sum_k sqrt(n_k(S))
    cost: float  # math.fsum(cost[mask])
    queries: int
    num_thresholds: int
    num_too_costly: int  # cost > budget: can never be chosen
    num_free: int  # cost == 0 and taken for free (zero_cost="include")
    everything_fit: bool
    guard_drops: int = 0


# ---------------------------------------------------------------------------------------------- helpers


def max_num_thresholds(eps: float) -> int:
    """Upper bound L on the number of phase-2 thresholds: ceil(ln(ALPHA/eps^2) / -ln(1-eps)) + 1."""
    _check_eps(eps)
    return math.ceil(math.log(ALPHA / eps**2) / -math.log1p(-eps)) + 1


def query_bound(n: int, eps: float) -> int:
    """n singletons + n (phase 1) + n*L (phase 2) + n (phase 3)."""
    return n * (max_num_thresholds(eps) + 3)


def threshold_schedule(d_max: float, gamma: float, budget: float, eps: float, cap: bool = True) -> np.ndarray:
    """Phase-2 density thresholds tau_hi (1-eps)^k while > tau_lo, then tau_lo once (docs/ftgp.md section 2.2).

    tau_lo = eps*gamma/budget; tau_hi = min(d_max, ALPHA*gamma/(eps*budget)) with the cap, else d_max.
    The cap keeps the count below `max_num_thresholds(eps)` whatever n and the data.
    """
    tau_lo = eps * gamma / budget
    tau_hi = min(d_max, ALPHA * gamma / (eps * budget)) if cap else d_max
    taus = []
    k = 0
    while True:
        tau = tau_hi * (1.0 - eps) ** k
        if not tau > tau_lo:
            break
        taus.append(tau)
        k += 1
    if cap:  # float rounding at the boundary must not add a pass beyond the bound
        del taus[max_num_thresholds(eps) - 1 :]
    taus.append(tau_lo)
    return np.asarray(taus, dtype=np.float64)


def set_cost(cost: np.ndarray, selection: np.ndarray) -> float:
    """Cost of a selection (bool mask or indices) as the correctly rounded sum: independent of order."""
    return math.fsum(np.asarray(cost, dtype=np.float64)[selection].tolist())


def _fits(costs: np.ndarray, budget: float) -> bool:
    """math.fsum(costs) <= budget, skipping the exact sum when a cheap error bound already decides."""
    if costs.size == 0:
        return budget >= 0
    total = float(costs.sum())
    slack = total * costs.size * 2.0**-52  # bounds the error of numpy's pairwise sum of non-negative terms
    if total + slack <= budget:
        return True
    if total - slack > budget:
        return False
    return math.fsum(costs.tolist()) <= budget


def _check_eps(eps: float) -> None:
    if not (0.0 < eps < 0.5):
        raise ValueError(f"eps must lie in (0, 1/2), got {eps!r}")


def _as_costs(costs) -> np.ndarray:
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 1:
        raise ValueError(f"costs must be a 1-D array, got shape {costs.shape}")
    if not np.all(np.isfinite(costs)):
        raise ValueError("costs must be finite (found NaN or inf)")
    if np.any(costs < 0):
        raise ValueError(f"costs must be non-negative, found {costs.min()!r}")
    return costs


def _as_budget(budget) -> float:
    budget = float(budget)
    if math.isnan(budget):
        raise ValueError("budget is NaN")
    return budget


def _scan_order(n: int, scan_order: str, seed: int) -> np.ndarray:
    if scan_order == "index":
        return np.arange(n)
    if scan_order == "permuted":
        return np.random.default_rng(seed).permutation(n)
    raise ValueError(f"scan_order must be one of {SCAN_ORDERS}, got {scan_order!r}")


@dataclass(frozen=True)
class _KpodProblem:
    """A validated instance of F' under a knapsack: where `ftgp_select_detailed` and the greedy baseline start.

    fitting: indices, in scan order, of the elements that fit the budget alone (zero-cost ones left out under
    zero_cost="exclude"). too_costly: how many elements cost more than the whole budget.
    """

    cost: np.ndarray
    cluster: np.ndarray
    budget: float
    beta: float
    fitting: np.ndarray
    too_costly: int

    @property
    def free(self) -> np.ndarray:
        """Fitting elements of cost 0: taken without search (they add diversity for nothing)."""
        return self.fitting[self.cost[self.fitting] == 0]

    @property
    def paid(self) -> np.ndarray:
        """Fitting elements of positive cost: what the search chooses among."""
        return self.fitting[self.cost[self.fitting] > 0]

    @property
    def codes(self) -> np.ndarray:
        """Cluster labels renumbered 0..K-1, so counts per cluster fit in a bincount."""
        return np.unique(self.cluster, return_inverse=True)[1].astype(np.int64)

    def selection(self, selected, queries=0, num_thresholds=0, everything_fit=False, guard_drops=0) -> KpodSelection:
        mask = np.zeros(len(self.cost), dtype=bool)
        mask[selected] = True
        return KpodSelection(
            mask,
            kpod_objective(self.cost, self.cluster, mask, self.beta),
            set_cost(self.cost, mask),
            queries,
            num_thresholds,
            self.too_costly,
            int(np.count_nonzero(self.cost[mask] == 0)),
            everything_fit,
            guard_drops,
        )

    def without_search(self) -> KpodSelection | None:
        """The answer when no search is needed (nothing fits, or every fitting element fits together), else None."""
        if self.budget < 0:
            return self.selection(np.zeros(0, np.int64))
        if _fits(self.cost[self.fitting], self.budget):
            return self.selection(self.fitting, everything_fit=True)
        return None


def _kpod_problem(cost, cluster, budget, beta, zero_cost: str, scan_order: str, seed: int) -> _KpodProblem:
    """Check the arguments of a selection on F' (clear errors for bad input) and find the elements that fit."""
    cost = _as_costs(cost)
    cluster = np.asarray(cluster)
    if cluster.shape != cost.shape:
        raise ValueError(f"cost and cluster must have the same shape, got {cost.shape} and {cluster.shape}")
    if cluster.size and not np.issubdtype(cluster.dtype, np.integer):
        raise ValueError(f"cluster labels must be integers, got dtype {cluster.dtype}")
    budget = _as_budget(budget)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0 (F' is monotone only then), got {beta!r}")
    if zero_cost not in ZERO_COST_POLICIES:
        raise ValueError(f"zero_cost must be one of {ZERO_COST_POLICIES}, got {zero_cost!r}")
    order = _scan_order(len(cost), scan_order, seed)
    fitting = order[cost[order] <= budget]
    if zero_cost == "exclude":
        fitting = fitting[cost[fitting] > 0]
    return _KpodProblem(cost, cluster, budget, float(beta), fitting, int(np.count_nonzero(cost > budget)))


def _suffix_estimate(x_cost: np.ndarray, x_gain: np.ndarray, budget: float) -> float:
    """Recorded gains of the longest suffix T of X with c(T) <= budget.

    By submodularity these gains (taken with respect to all of X's earlier elements) sum to at most f(T) <= OPT,
    and the ALPHA = 7 argument of docs/ftgp.md section 2.1 only uses that sum, so f(T) needs no extra query.
    """
    if len(x_cost) == 0:
        return 0.0
    suffix_cost = np.cumsum(x_cost[::-1])  # non-decreasing, so the fitting suffixes are a prefix of it
    length = int(np.searchsorted(suffix_cost, budget, side="right"))
    return float(np.cumsum(x_gain[::-1])[length - 1]) if length else 0.0


def _largest_fitting_prefix(prefix_cost: np.ndarray, cost_u: np.ndarray, budget: float) -> np.ndarray:
    """For each u: the largest i with prefix_cost[i] + cost_u <= budget, evaluated exactly as in phase 2.

    searchsorted tests prefix_cost[i] <= budget - cost_u, which can disagree with the float sum by one ulp;
    the two loops move each index to where the phase-2 test itself flips (prefix_cost[0] = 0 always fits).
    """
    last = len(prefix_cost) - 1
    idx = np.clip(np.searchsorted(prefix_cost, budget - cost_u, side="right") - 1, 0, last)
    while True:
        over = (idx > 0) & (prefix_cost[idx] + cost_u > budget)
        if not over.any():
            break
        idx[over] -= 1
    while True:
        nxt = np.minimum(idx + 1, last)
        under = (nxt > idx) & (prefix_cost[nxt] + cost_u <= budget)
        if not under.any():
            break
        idx[under] += 1
    return idx


def _budget_guard(selected: np.ndarray, cost: np.ndarray, budget: float) -> tuple[np.ndarray, int]:
    """Drop the last-added elements while the exact (fsum) cost exceeds the budget; normally drops nothing."""
    drops = 0
    while selected.size and not _fits(cost[selected], budget):
        selected = selected[:-1]
        drops += 1
    return selected, drops


# ---------------------------------------------------------------------------------------------- generic FTGP


def ftgp(
    marginal_fn: MarginalFn,
    costs: Sequence[float],
    budget: float,
    eps: float = 0.1,
    order: Sequence[int] | None = None,
    *,
    cap: bool = True,
) -> FtgpResult:
    """Generic FTGP (docs/ftgp.md section 2) for a normalised monotone submodular f.

    marginal_fn(u, S) must return f(S + u) - f(S) for an element u and a tuple S of elements (in the order they
    were added); every call counts as one query. costs: (n,) non-negative; order: scan order (default 0..n-1).
    Zero-cost elements are taken up front and the rest runs on the contracted function (section 2.0).
    Guarantee: feasible, f >= (1/2 - eps) OPT, at most `query_bound(n, eps)` queries.
    """
    costs = _as_costs(costs)
    budget = _as_budget(budget)
    _check_eps(eps)
    n = len(costs)
    order = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError("order must be a permutation of range(len(costs))")
    queries = 0

    def gain(u: int, chosen: tuple) -> float:
        nonlocal queries
        queries += 1
        return float(marginal_fn(int(u), chosen))

    if budget < 0:
        return FtgpResult(np.zeros(0, dtype=np.int64), 0.0, 0)
    fitting = order[costs[order] <= budget]
    if _fits(costs[fitting], budget):
        return FtgpResult(fitting, float("nan"), 0, everything_fit=True)
    free = tuple(int(u) for u in fitting if costs[u] == 0)
    paid = [int(u) for u in fitting if costs[u] > 0]
    singles = np.array([gain(u, free) for u in paid], dtype=np.float64)
    paid = [u for u, s in zip(paid, singles) if s > 0]
    singles = singles[singles > 0]
    if not paid:
        return FtgpResult(np.array(free, dtype=np.int64), 0.0, queries)

    # Phase 1: one pass that keeps u when f(u|X) >= c(u) f(X)/B, then Gamma from the best suffix of X.
    half = budget / 2
    x, x_gain, fx = [], [], 0.0
    for u in paid:
        cu = costs[u]
        if cu <= half:
            g = gain(u, free + tuple(x))
            if g >= cu * fx / budget:
                x.append(u)
                x_gain.append(g)
                fx += g
    gamma = max(float(singles.max()), _suffix_estimate(costs[x], np.asarray(x_gain, dtype=np.float64), budget))
    taus = threshold_schedule(float(np.max(singles / costs[paid])), gamma, budget, eps, cap)

    # Phase 2: decreasing thresholds; an element that no longer fits is dropped for good (cS only grows).
    s, s_gain, cs = [], [], 0.0
    chosen = free
    remaining = paid
    for tau in taus:
        kept = []
        for u in remaining:
            cu = costs[u]
            if cs + cu > budget:
                continue
            g = gain(u, chosen)
            if g >= tau * cu:
                s.append(u)
                s_gain.append(g)
                cs += cu
                chosen = chosen + (u,)
            else:
                kept.append(u)
        remaining = kept
        if not remaining:
            break

    # Phase 3: every leftover u on top of the longest prefix of S it fits with; keep the first strict maximum.
    prefix_cost = np.concatenate([[0.0], np.cumsum(costs[s])])
    prefix_value = np.concatenate([[0.0], np.cumsum(np.asarray(s_gain, dtype=np.float64))])
    in_s = set(s)
    cand = np.array([u for u in paid if u not in in_s], dtype=np.int64)
    idx = _largest_fitting_prefix(prefix_cost, costs[cand], budget)
    values = np.array(
        [prefix_value[i] + gain(u, free + tuple(s[:i])) for u, i in zip(cand.tolist(), idx.tolist())],
        dtype=np.float64,
    )
    best_value = prefix_value[-1]
    if values.size and values.max() > best_value:
        j = int(np.argmax(values))
        s, best_value = s[: idx[j]] + [int(cand[j])], values[j]
    selected, drops = _budget_guard(np.array(free + tuple(s), dtype=np.int64), costs, budget)
    return FtgpResult(selected, float(best_value), queries, len(taus), gamma, False, drops)


def kpod_gain_oracle(cost: np.ndarray, cluster: np.ndarray, beta: float) -> MarginalFn:
    """Marginal-gain oracle of F' for the generic `ftgp`: a_u + beta (sqrt(n_k + 1) - sqrt(n_k)), k = cluster[u].

    Uses the same float expression as the fast path (a table of square roots), so both select the same set.
    """
    cost = np.asarray(cost, dtype=np.float64)
    cluster = np.asarray(cluster)
    sq = np.sqrt(np.arange(len(cost) + 2, dtype=np.float64))

    def marginal(u: int, chosen: tuple) -> float:
        m = int(np.count_nonzero(cluster[list(chosen)] == cluster[u])) if chosen else 0
        return cost[u] + beta * (sq[m + 1] - sq[m])

    return marginal


def kpod_objective(cost: np.ndarray, cluster: np.ndarray, selection: np.ndarray, beta: float = 12.0) -> float:
    """F'(S) = sum_{i in S} a_i + beta * sum_k sqrt(|C_k & S|) for a bool mask or index array S."""
    cost = np.asarray(cost, dtype=np.float64)
    _, counts = np.unique(np.asarray(cluster)[selection], return_counts=True)
    return set_cost(cost, selection) + beta * float(np.sqrt(counts).sum())


# ---------------------------------------------------------------------------------------------- fast F' path


def _run_passes(backend, a, k, sq, beta, budget, eps, cap, cnt, singles):
    """Phases 1 and 2 on local arrays a (costs), k (cluster codes). Returns (s_idx, s_gain, taus, gamma, queries)."""
    kernels = None
    if backend in ("auto", "numba"):
        kernels = ftgp_kernels.compiled_kernels()
        if kernels is None and backend == "numba":
            raise RuntimeError("backend='numba' requested but numba is not importable")
    n = len(a)
    if kernels is not None:
        estimate, passes = kernels
        args = (a, k, sq, float(beta), float(budget))
        x_idx, x_gain = np.empty(n, np.int64), np.empty(n, np.float64)
        nx, q1 = estimate(*args, cnt.copy(), x_idx, x_gain)
    else:  # plain Python on lists: the same code, about 1e6 element checks per second
        estimate, passes = ftgp_kernels.estimate_pass, ftgp_kernels.threshold_passes
        args = (a.tolist(), k.tolist(), sq.tolist(), float(beta), float(budget))
        x_idx, x_gain = [0] * n, [0.0] * n
        nx, q1 = estimate(*args, cnt.tolist(), x_idx, x_gain)
    x_idx, x_gain = np.asarray(x_idx[:nx], np.int64), np.asarray(x_gain[:nx], np.float64)
    gamma = max(float(singles.max()), _suffix_estimate(a[x_idx], x_gain, budget))
    taus = threshold_schedule(float(np.max(singles / a)), gamma, budget, eps, cap)
    if kernels is not None:
        s_idx, s_gain, remaining, cnt_run = np.empty(n, np.int64), np.empty(n, np.float64), np.arange(n), cnt.copy()
        m, q2 = passes(*args, taus, cnt_run, remaining, n, s_idx, s_gain)
    else:
        s_idx, s_gain = [0] * n, [0.0] * n
        m, q2 = passes(*args, taus.tolist(), cnt.tolist(), list(range(n)), n, s_idx, s_gain)
    s_idx, s_gain = np.asarray(s_idx[:m], np.int64), np.asarray(s_gain[:m], np.float64)
    return s_idx, s_gain, taus, gamma, q1 + q2


def ftgp_select_detailed(
    cost,
    cluster,
    budget: float,
    beta: float = 12.0,
    eps: float = 0.1,
    seed: int = 0,
    *,
    zero_cost: str = "exclude",
    scan_order: str = "index",
    backend: str = "auto",
    cap: bool = True,
) -> KpodSelection:
    """FTGP on KPOD's F' (docs/ftgp.md section 3); see `ftgp_select` for the arguments."""
    problem = _kpod_problem(cost, cluster, budget, beta, zero_cost, scan_order, seed)
    _check_eps(eps)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    answer = problem.without_search()
    if answer is not None:
        return answer
    cost, budget, beta, n = problem.cost, problem.budget, problem.beta, len(problem.cost)
    free, paid, codes = problem.free, problem.paid, problem.codes
    cnt = np.bincount(codes[free], minlength=codes.max() + 1).astype(np.int64)
    sq = np.sqrt(np.arange(n + 2, dtype=np.float64))
    a, k = cost[paid], codes[paid]
    singles = a + beta * (sq[cnt[k] + 1] - sq[cnt[k]])
    s_idx, s_gain, taus, _, queries = _run_passes(backend, a, k, sq, beta, budget, eps, cap, cnt, singles)
    queries += len(a)

    # Phase 3, vectorised: n_k(S_i) for every candidate from sorted (cluster, position) keys of S.
    m = len(s_idx)
    prefix_cost = np.concatenate([[0.0], np.cumsum(a[s_idx])])
    prefix_value = np.concatenate([[0.0], np.cumsum(s_gain)])
    in_s = np.zeros(len(a), dtype=bool)
    in_s[s_idx] = True
    cand = np.flatnonzero(~in_s)
    idx = _largest_fitting_prefix(prefix_cost, a[cand], budget)
    keys = np.sort(k[s_idx] * (m + 1) + np.arange(m))
    base = k[cand] * (m + 1)
    c = cnt[k[cand]] + np.searchsorted(keys, base + idx) - np.searchsorted(keys, base)
    values = prefix_value[idx] + (a[cand] + beta * (sq[c + 1] - sq[c]))
    queries += len(cand)
    chosen = s_idx
    if values.size and values.max() > prefix_value[-1]:
        j = int(np.argmax(values))
        chosen = np.append(s_idx[: idx[j]], cand[j])
    selected, drops = _budget_guard(np.concatenate([free, paid[chosen]]), cost, budget)
    return problem.selection(selected, queries, len(taus), guard_drops=drops)


def ftgp_select(
    cost,
    cluster,
    budget: float,
    beta: float = 12.0,
    eps: float = 0.1,
    seed: int = 0,
    *,
    zero_cost: str = "exclude",
    scan_order: str = "index",
    backend: str = "auto",
    cap: bool = True,
) -> np.ndarray:
    """Select S maximising F'(S) = sum a_S + beta * sum_k sqrt(|C_k & S|) s.t. sum a_S <= budget; (n,) bool mask.

    cost: (n,) non-negative floats a_i; cluster: (n,) int labels; budget: float (negative -> empty set).
    eps in (0, 1/2): guarantee F'(S) >= (1/2 - eps) OPT with O(n/eps log 1/eps) gain evaluations.
    zero_cost: "exclude" never selects a_i = 0 (KPOD: a question with no steps left); "include" takes every
    a_i = 0 for free up front and lets them count in the diversity term (the generic rule).
    scan_order: "index" (ascending) or "permuted" (np.random.default_rng(seed) permutation).
    backend: "auto" (numba if importable), "numba" or "python"; all give the identical set.
    cap=False drops the tau_hi cap of docs/ftgp.md section 2.2 (more passes; a fallback for the proof's weak spot).
    """
    return ftgp_select_detailed(
        cost, cluster, budget, beta, eps, seed, zero_cost=zero_cost, scan_order=scan_order, backend=backend, cap=cap
    ).mask
