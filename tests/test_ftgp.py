"""Tests for FTGP (kpod.curriculum.ftgp) and its greedy baseline, following docs/ftgp.md section 4.

Brute force over all 2^n subsets (n <= 12) checks the (1/2 - eps) guarantee on KPOD's F', weighted coverage,
facility location, plain knapsack and adversarial instances; property tests check F'; the numba, plain-Python
and generic-oracle paths must return the identical set with the same number of queries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod.curriculum import ftgp as ftgp_module
from kpod.curriculum import ftgp_kernels
from kpod.curriculum import ftgp_select, greedy_select
from kpod.curriculum.ftgp import (
    ftgp,
    ftgp_select_detailed,
    kpod_gain_oracle,
    kpod_objective,
    max_num_thresholds,
    numba_available,
    query_bound,
    set_cost,
    threshold_schedule,
)
from kpod.curriculum.greedy import greedy_select_detailed

EPS_VALUES = (0.05, 0.1, 0.2, 0.3)
BACKENDS = ["python"] + (["numba"] if numba_available() else [])


# ------------------------------------------------------------------------------------------- brute force


def all_subsets(n: int) -> np.ndarray:
    """(2^n, n) bool: row r is the subset whose bits are set in r."""
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)


def brute_force_opt(values: np.ndarray, cost: np.ndarray, budget: float, allowed: np.ndarray | None = None) -> float:
    """max over feasible subsets; values: (2^n,) f of every subset in `all_subsets` order."""
    subsets = all_subsets(len(cost))
    feasible = subsets.astype(np.float64) @ cost <= budget * (1 + 1e-12)
    if allowed is not None:  # subsets that use only allowed elements
        feasible &= ~(subsets & ~allowed).any(axis=1)
    return float(values[feasible].max())


def fprime_all(cost, cluster, beta) -> np.ndarray:
    subsets = all_subsets(len(cost)).astype(np.float64)
    per_cluster = subsets @ (cluster[:, None] == np.unique(cluster)[None, :]).astype(np.float64)
    return subsets @ cost + beta * np.sqrt(per_cluster).sum(axis=1)


def grow_all(n: int, per_item: np.ndarray, combine) -> np.ndarray:
    """State of every subset built bit by bit: state[2^i + r] = combine(state[r], per_item[i])."""
    state = np.zeros((2**n,) + per_item.shape[1:], dtype=per_item.dtype)
    for i in range(n):
        state[2**i : 2 ** (i + 1)] = combine(state[: 2**i], per_item[i])
    return state


class Coverage:
    """f(S) = total weight of the ground elements covered by S."""

    def __init__(self, rng, n):
        m = int(rng.integers(4, 16))
        self.sets = rng.random((n, m)) < rng.uniform(0.1, 0.5)
        self.weights = rng.uniform(0, 3, m)

    def marginal(self, u, chosen):
        covered = self.sets[list(chosen)].any(axis=0) if chosen else np.zeros(self.sets.shape[1], bool)
        return float(self.weights[self.sets[u] & ~covered].sum())

    def all_values(self):
        return grow_all(len(self.sets), self.sets, np.logical_or) @ self.weights

    def value(self, sel):
        return float(self.weights[self.sets[sel].any(axis=0)].sum())


class FacilityLocation:
    """f(S) = sum_j max_{i in S} W[i, j] (0 for the empty set)."""

    def __init__(self, rng, n):
        self.w = rng.exponential(1.0, (n, int(rng.integers(2, 10))))

    def marginal(self, u, chosen):
        best = self.w[list(chosen)].max(axis=0) if chosen else np.zeros(self.w.shape[1])
        return float(np.maximum(self.w[u] - best, 0).sum())

    def all_values(self):
        return grow_all(len(self.w), self.w, np.maximum).sum(axis=1)

    def value(self, sel):
        return float(self.w[sel].max(axis=0).sum()) if np.any(sel) else 0.0


class Modular:
    def __init__(self, rng, n, values=None):
        self.v = rng.uniform(0, 5, n) if values is None else np.asarray(values, dtype=np.float64)

    def marginal(self, u, chosen):
        return float(self.v[u])

    def all_values(self):
        return all_subsets(len(self.v)).astype(np.float64) @ self.v

    def value(self, sel):
        return float(self.v[sel].sum())


def random_costs(rng, n):
    cost = rng.uniform(0, 5, n)
    cost[rng.random(n) < 0.15] = 0.0
    budget = rng.uniform(cost.min(), cost.sum()) if cost.sum() > 0 else 0.0
    return cost, budget


def check_generic(fn, cost, budget, eps):
    """Runs generic FTGP; asserts feasibility, the ratio and the query bound; returns the ratio."""
    res = ftgp(fn.marginal, cost, budget, eps)
    sel = np.zeros(len(cost), bool)
    sel[res.selected] = True
    assert set_cost(cost, sel) <= budget
    assert res.queries <= query_bound(len(cost), eps)
    opt = brute_force_opt(fn.all_values(), cost, budget)
    value = fn.value(sel)
    assert value >= (0.5 - eps) * opt - 1e-9, (value, opt)
    return value / opt if opt > 0 else 1.0


@pytest.mark.parametrize("eps", EPS_VALUES)
def test_fprime_within_guarantee_of_brute_force(eps):
    rng = np.random.default_rng(int(eps * 1000))
    worst = 1.0
    for _ in range(500):
        n = int(rng.integers(1, 13))
        cost, budget = random_costs(rng, n)
        cluster = rng.integers(0, int(rng.integers(1, 5)), n)
        beta = float(rng.choice([0.0, 1.0, 12.0]))
        zero_cost = str(rng.choice(["exclude", "include"]))
        sel = ftgp_select(cost, cluster, budget, beta, eps, zero_cost=zero_cost)
        assert set_cost(cost, sel) <= budget
        if zero_cost == "exclude":
            assert not np.any(sel & (cost == 0))
        allowed = cost > 0 if zero_cost == "exclude" else None
        opt = brute_force_opt(fprime_all(cost, cluster, beta), cost, budget, allowed)
        value = kpod_objective(cost, cluster, sel, beta)
        assert value >= (0.5 - eps) * opt - 1e-9, (value, opt, cost, cluster, budget, beta)
        worst = min(worst, value / opt if opt > 0 else 1.0)
    assert worst > 0.5 - eps


@pytest.mark.parametrize("eps", EPS_VALUES)
@pytest.mark.parametrize("family", [Coverage, FacilityLocation, Modular])
def test_generic_within_guarantee_of_brute_force(eps, family):
    rng = np.random.default_rng(hash((family.__name__, eps)) % 2**32)
    for _ in range(150):
        n = int(rng.integers(1, 13))
        cost, budget = random_costs(rng, n)
        check_generic(family(rng, n), cost, budget, eps)


@pytest.mark.parametrize("eps", EPS_VALUES)
def test_adversarial_instances(eps):
    rng = np.random.default_rng(7)
    b = 10.0
    # one item of cost B worth a lot, plus tiny very dense items: density greedy alone gets almost nothing
    cost = np.array([b] + [0.01] * 8)
    assert check_generic(Modular(rng, 9, [100.0] + [0.05] * 8), cost, b, eps) > 0.9
    # two items of cost B/2 + delta (only one fits) next to cheaper ones
    cost = np.array([b / 2 + 0.1, b / 2 + 0.1, 3.0, 3.0, 2.0])
    check_generic(Modular(rng, 5, [6.0, 6.0, 3.0, 3.1, 1.0]), cost, b, eps)
    # zero-cost items, items dearer than the budget, budget 0, everything fits
    cost = np.array([0.0, 0.0, 11.0, 4.0, 6.0, 7.0])
    check_generic(Coverage(rng, 6), cost, b, eps)
    check_generic(FacilityLocation(rng, 6), cost, 0.0, eps)
    cost = rng.uniform(0, 1, 8)
    res = ftgp(Modular(rng, 8).marginal, cost, math.fsum(cost), eps)
    assert res.everything_fit and sorted(res.selected.tolist()) == list(range(8)) and res.queries == 0
    # F' with one expensive question that beats everything through its cost
    cost = np.array([9.5, 0.2, 0.2, 0.2, 0.2])
    sel = ftgp_select(cost, np.zeros(5, int), 10.0, 1.0, eps)
    opt = brute_force_opt(fprime_all(cost, np.zeros(5, int), 1.0), cost, 10.0)
    assert kpod_objective(cost, np.zeros(5, int), sel, 1.0) >= (0.5 - eps) * opt


def test_budget_guard_uses_exact_sum():
    # running sum: 1 + 2^-53 + 2^-53 rounds to 1.0 at each step, but the exact sum rounds to 1 + 2^-52 > 1
    cost = np.array([1.0, 2.0**-53, 2.0**-53])
    for backend in BACKENDS:
        info = ftgp_select_detailed(cost, np.zeros(3, int), 1.0, beta=0.0, backend=backend)
        assert set_cost(cost, info.mask) <= 1.0 and info.guard_drops == 1
    res = ftgp(Modular(None, 3, cost).marginal, cost, 1.0)
    assert set_cost(cost, res.selected) <= 1.0 and res.guard_drops == 1


# ------------------------------------------------------------------------------------------- F' properties


fprime_instances = st.integers(1, 10).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 10, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.integers(0, n - 1),
        st.sampled_from([0.0, 1.0, 12.0]),
    )
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(fprime_instances)
def test_fprime_is_normalised_monotone_submodular(instance):
    cost, cluster, in_a, in_y, x, beta = instance
    cost, cluster = np.array(cost), np.array(cluster)
    a = np.array(in_a)
    a[x] = False
    a_y = a | np.array(in_y)
    a_y[x] = False

    def f(mask):
        return kpod_objective(cost, cluster, mask, beta)

    def plus_x(mask):
        out = mask.copy()
        out[x] = True
        return out

    assert f(np.zeros(len(cost), bool)) == 0.0
    assert f(a) <= f(plus_x(a)) + 1e-9
    assert f(plus_x(a)) - f(a) >= f(plus_x(a_y)) - f(a_y) - 1e-9
    gain = kpod_gain_oracle(cost, cluster, beta)(x, tuple(np.flatnonzero(a).tolist()))
    assert gain == pytest.approx(f(plus_x(a)) - f(a), abs=1e-9)


# ------------------------------------------------------------------------------------------- paths agree


def generic_fprime(cost, cluster, budget, beta, eps, order, zero_cost, cap=True):
    """Generic FTGP with the F' oracle, emulating zero_cost="exclude" by removing cost-0 items."""
    keep = np.ones(len(cost), bool) if zero_cost == "include" else cost > 0
    index = np.flatnonzero(keep)
    local_order = np.searchsorted(index, order[keep[order]])  # kept items, in scan order, as local indices
    res = ftgp(kpod_gain_oracle(cost[index], cluster[index], beta), cost[index], budget, eps, local_order, cap=cap)
    mask = np.zeros(len(cost), bool)
    mask[index[res.selected]] = True
    return mask, res.queries


@pytest.mark.parametrize("seed", range(12))
def test_fast_python_and_generic_paths_agree(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 160))
    cost = rng.gamma(float(rng.uniform(0.3, 3)), 1.0, n)
    cost[rng.random(n) < 0.1] = 0.0
    cluster = rng.integers(-2, int(rng.integers(-1, 6)), n)
    budget = float(rng.uniform(0.05, 0.9)) * cost.sum()
    beta = float(rng.choice([0.0, 1.0, 12.0]))
    eps = float(rng.choice(EPS_VALUES))
    zero_cost = ("exclude", "include")[seed % 2]
    scan_order = ("index", "permuted")[(seed // 2) % 2]
    cap = seed % 5 != 4
    order = np.arange(n) if scan_order == "index" else np.random.default_rng(seed).permutation(n)
    expected, expected_queries = generic_fprime(cost, cluster, budget, beta, eps, order, zero_cost, cap)
    for backend in BACKENDS:
        info = ftgp_select_detailed(
            cost, cluster, budget, beta, eps, seed, zero_cost=zero_cost, scan_order=scan_order, backend=backend, cap=cap
        )
        np.testing.assert_array_equal(info.mask, expected)
        assert info.queries == expected_queries
        assert info.queries <= query_bound(n, eps)
        assert info.num_thresholds <= max_num_thresholds(eps) or not cap


def test_paths_agree_on_small_instances():
    # small n makes the phase-3 step decide often, with free (zero-cost) items counted in the clusters
    rng = np.random.default_rng(21)
    for i in range(300):
        n = int(rng.integers(1, 13))
        cost, budget = random_costs(rng, n)
        cluster = rng.integers(0, int(rng.integers(1, 4)), n)
        beta, eps = float(rng.choice([1.0, 12.0])), float(rng.choice(EPS_VALUES))
        zero_cost = ("include", "exclude")[i % 2]
        expected, queries = generic_fprime(cost, cluster, budget, beta, eps, np.arange(n), zero_cost)
        for backend in BACKENDS:
            info = ftgp_select_detailed(cost, cluster, budget, beta, eps, zero_cost=zero_cost, backend=backend)
            np.testing.assert_array_equal(info.mask, expected)
            assert info.queries == queries


@pytest.mark.parametrize("eps", (0.05, 0.2))
def test_query_count_per_element_does_not_grow_with_n(eps):
    rng = np.random.default_rng(3)
    per_element = []
    for n in (2000, 20000):
        cost, cluster = rng.gamma(2.0, 1.0, n), rng.integers(0, 5, n)
        info = ftgp_select_detailed(cost, cluster, 0.3 * cost.sum(), 12.0, eps)
        assert info.queries <= query_bound(n, eps) and info.num_thresholds <= max_num_thresholds(eps)
        per_element.append(info.queries / n)
    assert max(per_element) <= max_num_thresholds(eps) + 3
    assert per_element[1] <= 1.1 * per_element[0]  # flat once the diversity term is small against the budget


def test_largest_fitting_prefix_matches_the_running_sum_test():
    # budgets that equal some P[j] + c in floats: there `P[j] <= B - c` (searchsorted) often disagrees
    rng = np.random.default_rng(4)
    prefix = np.concatenate([[0.0], np.cumsum(rng.uniform(0, 1, 50))])
    cost_u = rng.uniform(0, 3, 2000)
    budget = float(prefix[25] + 1.5)
    budgets = prefix[rng.integers(0, 51, 2000)] + cost_u
    budgets[1000:] = np.nextafter(budgets[1000:], -np.inf)  # just below: searchsorted may now overshoot
    for c, b in zip(cost_u.tolist(), budgets.tolist()):
        if c > b:  # such an element is never a candidate
            continue
        got = ftgp_module._largest_fitting_prefix(prefix, np.array([c]), b)[0]
        assert got == max(i for i in range(51) if prefix[i] + c <= b)
    got = ftgp_module._largest_fitting_prefix(prefix, cost_u[cost_u <= budget], budget)
    want = [max(i for i in range(51) if prefix[i] + c <= budget) for c in cost_u[cost_u <= budget]]
    assert got.tolist() == want


def test_phase_one_estimate_uses_the_fitting_suffix():
    # X costs 3, 3, 3 with budget 7: the longest suffix that fits is the last two elements
    gamma = ftgp_module._suffix_estimate(np.array([3.0, 3.0, 3.0]), np.array([5.0, 2.0, 1.0]), 7.0)
    assert gamma == 3.0
    assert ftgp_module._suffix_estimate(np.zeros(0), np.zeros(0), 7.0) == 0.0


def test_threshold_count_formula():
    for eps in EPS_VALUES:
        for ratio in (1e-3, 1.0, 1e3, 1e9):
            taus = threshold_schedule(ratio, 1.0, 1.0, eps)
            assert len(taus) <= max_num_thresholds(eps)
            assert np.all(np.diff(taus) < 0) and taus[-1] == pytest.approx(eps)
    assert max_num_thresholds(0.1) == 64  # ceil(ln(700) / -ln(0.9)) + 1


# ------------------------------------------------------------------------------------------- edge cases, errors


def test_edge_cases():
    cost = np.array([0.0, 2.0, 0.0, 5.0, 1.0])
    cluster = np.array([0, 1, 1, 0, 2])
    assert not ftgp_select(cost, cluster, -1.0, zero_cost="include").any()
    assert ftgp_select(cost, cluster, 0.0, zero_cost="include").tolist() == [True, False, True, False, False]
    assert not ftgp_select(cost, cluster, 0.0).any()
    assert ftgp_select(cost, cluster, 8.0).tolist() == [False, True, False, True, True]  # all positive-cost fit
    sel = ftgp_select(cost, cluster, 3.5, zero_cost="include")
    assert not sel[3] and sel[0] and sel[2]  # 5.0 > budget never chosen; free items always taken
    info = ftgp_select_detailed(cost, cluster, 3.5, zero_cost="include")
    assert info.num_too_costly == 1 and info.num_free == 2
    empty = ftgp_select(np.zeros(0), np.zeros(0, int), 1.0)
    assert empty.shape == (0,)


def test_deterministic_under_fixed_seed_and_order():
    rng = np.random.default_rng(11)
    cost, cluster = rng.gamma(1.0, 1.0, 500), rng.integers(0, 5, 500)
    for scan_order in ("index", "permuted"):
        runs = [ftgp_select(cost, cluster, 40.0, seed=5, scan_order=scan_order) for _ in range(2)]
        np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cost": [1.0, 2.0], "cluster": [0]}, "same shape"),
        ({"cost": [1.0, -2.0]}, "non-negative"),
        ({"cost": [1.0, float("nan")]}, "finite"),
        ({"budget": float("nan")}, "NaN"),
        ({"eps": 0.0}, "eps"),
        ({"eps": 0.5}, "eps"),
        ({"beta": -1.0}, "beta"),
        ({"zero_cost": "maybe"}, "zero_cost"),
        ({"scan_order": "random"}, "scan_order"),
        ({"cluster": [0.5, 1.0]}, "integers"),
    ],
)
def test_invalid_inputs_raise(kwargs, message):
    args = {"cost": [1.0, 2.0], "cluster": [0, 1], "budget": 2.0} | kwargs
    args["cost"], args["cluster"] = np.asarray(args["cost"]), np.asarray(args["cluster"])
    with pytest.raises(ValueError, match=message):
        ftgp_select(**args)
    if "eps" not in kwargs:  # the greedy baseline takes the same instances, so it must refuse the same ones
        with pytest.raises(ValueError, match=message):
            greedy_select(**args)


def test_generic_rejects_bad_order_and_eps():
    with pytest.raises(ValueError, match="permutation"):
        ftgp(lambda u, s: 1.0, [1.0, 1.0], 1.0, 0.1, [0, 0])
    with pytest.raises(ValueError, match="eps"):
        ftgp(lambda u, s: 1.0, [1.0], 1.0, 0.7)


def test_python_backend_is_used_without_numba(monkeypatch):
    cost, cluster = np.array([3.0, 1.0, 1.0, 2.0]), np.array([0, 0, 1, 1])
    monkeypatch.setattr(ftgp_kernels, "compiled_kernels", lambda: None)
    assert ftgp_select(cost, cluster, 4.0, 1.0).tolist() == ftgp_select(cost, cluster, 4.0, 1.0, backend="python").tolist()
    with pytest.raises(RuntimeError, match="numba"):
        ftgp_select(cost, cluster, 4.0, backend="numba")


# ------------------------------------------------------------------------------------------- greedy baseline


def reference_greedy(cost, cluster, budget, beta):
    """Non-lazy cost-benefit greedy (ties: lowest index) + best singleton, on positive-cost fitting items."""
    items = [u for u in range(len(cost)) if 0 < cost[u] <= budget]
    chosen, spent = [], 0.0
    while True:
        best, best_density = None, -1.0
        for u in items:
            if u in chosen or spent + cost[u] > budget:
                continue
            m = sum(cluster[v] == cluster[u] for v in chosen)
            density = (cost[u] + beta * (math.sqrt(m + 1) - math.sqrt(m))) / cost[u]
            if density > best_density:
                best, best_density = u, density
        if best is None:
            break
        chosen.append(best)
        spent += cost[best]
    mask = np.zeros(len(cost), bool)
    mask[chosen] = True
    if items:
        single = max(items, key=lambda u: (cost[u] + beta, -u))
        if cost[single] + beta > kpod_objective(cost, cluster, mask, beta):
            mask[:] = False
            mask[single] = True
    return mask


def test_greedy_matches_reference_and_classic_bound():
    rng = np.random.default_rng(5)
    bound = (1 - 1 / math.e) / 2
    for _ in range(150):
        n = int(rng.integers(1, 11))
        cost, budget = random_costs(rng, n)
        cost[cost == 0] = 0.5
        cluster = rng.integers(0, 3, n)
        beta = float(rng.choice([0.0, 1.0, 12.0]))
        sel = greedy_select(cost, cluster, budget, beta)
        if math.fsum(cost[(cost <= budget)]) > budget:  # otherwise both return every fitting item
            np.testing.assert_array_equal(sel, reference_greedy(cost, cluster, budget, beta))
        assert set_cost(cost, sel) <= budget
        opt = brute_force_opt(fprime_all(cost, cluster, beta), cost, budget)
        assert kpod_objective(cost, cluster, sel, beta) >= bound * opt - 1e-9


def test_greedy_counts_lazy_queries():
    rng = np.random.default_rng(2)
    cost, cluster = rng.gamma(2.0, 1.0, 2000), rng.integers(0, 5, 2000)
    info = greedy_select_detailed(cost, cluster, 0.3 * cost.sum())
    assert 2 * 2000 <= info.queries and info.cost <= 0.3 * cost.sum()
