"""Baseline for FTGP: the classic cost-benefit greedy plus best singleton on KPOD's F' (docs/ftgp.md section 4.5).

Repeatedly add the fitting element with the largest density F'(u|S)/a_u (ties: lowest scan position), skip
elements that no longer fit, then return the better of that set and the best single element (Khuller-Moss-Naor
style; ratio at least (1 - 1/e)/2). Evaluation is lazy: F'(u|S) depends only on the count of u's cluster in S,
so a heap entry is fresh exactly when that count has not changed since it was computed.

    >>> import numpy as np
    >>> greedy_select(np.array([3.0, 1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]), budget=4.0, beta=1.0).tolist()
    [False, True, True, True]
"""

from __future__ import annotations

import heapq

import numpy as np

from kpod.curriculum.ftgp import KpodSelection, _kpod_problem


def greedy_select_detailed(
    cost,
    cluster,
    budget: float,
    beta: float = 12.0,
    *,
    zero_cost: str = "exclude",
    scan_order: str = "index",
    seed: int = 0,
) -> KpodSelection:
    """Lazy cost-benefit greedy + best singleton on F'; arguments as in `ftgp_select`. queries counts gains."""
    problem = _kpod_problem(cost, cluster, budget, beta, zero_cost, scan_order, seed)
    answer = problem.without_search()
    if answer is not None:
        return answer
    cost, budget, beta, n = problem.cost, problem.budget, problem.beta, len(problem.cost)
    free, paid, codes = problem.free, problem.paid, problem.codes
    rank = np.empty(n, dtype=np.int64)  # scan position, the tie-break
    rank[problem.fitting] = np.arange(len(problem.fitting))
    cnt = np.bincount(codes[free], minlength=codes.max() + 1).tolist()
    sq = np.sqrt(np.arange(n + 2, dtype=np.float64)).tolist()
    a, k = cost.tolist(), codes.tolist()

    def gain(u: int) -> float:
        c = cnt[k[u]]
        return a[u] + beta * (sq[c + 1] - sq[c])

    # heap entries: (-density, scan rank, element, cluster count the density was computed at)
    heap = [(-gain(u) / a[u], rank[u], u, cnt[k[u]]) for u in paid.tolist()]
    queries = len(heap)
    heapq.heapify(heap)
    chosen, spent, value = [], 0.0, 0.0
    while heap:
        _, r, u, stamp = heapq.heappop(heap)
        if spent + a[u] > budget:
            continue  # never fits again: spent only grows
        if stamp != cnt[k[u]]:
            queries += 1
            heapq.heappush(heap, (-gain(u) / a[u], r, u, cnt[k[u]]))
            continue
        g = gain(u)
        chosen.append(u)
        spent += a[u]
        value += g
        cnt[k[u]] += 1
    # best singleton of the contracted problem (gains on top of the free elements)
    base = np.bincount(codes[free], minlength=codes.max() + 1)[codes[paid]]
    sq_table = np.asarray(sq)
    singles = cost[paid] + beta * (sq_table[base + 1] - sq_table[base])
    queries += len(paid)
    if singles.size and singles.max() > value:
        chosen = [int(paid[int(np.argmax(singles))])]
    return problem.selection(np.concatenate([free, np.asarray(chosen, dtype=np.int64)]).astype(np.int64), queries)


def greedy_select(
    cost,
    cluster,
    budget: float,
    beta: float = 12.0,
    *,
    zero_cost: str = "exclude",
    scan_order: str = "index",
    seed: int = 0,
) -> np.ndarray:
    """(n,) bool mask of the cost-benefit greedy + best singleton on F' (same conventions as `ftgp_select`)."""
    return greedy_select_detailed(cost, cluster, budget, beta, zero_cost=zero_cost, scan_order=scan_order, seed=seed).mask


__all__ = ["greedy_select", "greedy_select_detailed"]
