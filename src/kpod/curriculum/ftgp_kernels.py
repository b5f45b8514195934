"""The sequential passes of FTGP on KPOD's F' (phases 1 and 2 of docs/ftgp.md section 2), written once.

The same source runs compiled by numba on numpy arrays (the fast path) and as plain Python on lists (the fallback
when numba is missing); both do the identical float operations in the identical order, so they pick the same set.
A gain is F'(u|S) = a_u + beta * (sq[m + 1] - sq[m]) with m = |C_k(u) & S| and sq a table of square roots.
Arguments use local indices 0..len(a)-1 (the eligible elements in scan order); cnt holds the cluster counts.
"""

from __future__ import annotations

import functools


def estimate_pass(a, k, sq, beta, budget, cnt, x_idx, x_gain):
    """Phase 1 for F' on local arrays (scan order). Fills x_idx/x_gain; returns (len(X), queries)."""
    half = budget / 2
    nx = 0
    queries = 0
    fx = 0.0
    for j in range(len(a)):
        cu = a[j]
        if cu <= half:
            c = cnt[k[j]]
            g = cu + beta * (sq[c + 1] - sq[c])
            queries += 1
            if g >= cu * fx / budget:
                x_idx[nx] = j
                x_gain[nx] = g
                nx += 1
                fx += g
                cnt[k[j]] = c + 1
    return nx, queries


def threshold_passes(a, k, sq, beta, budget, taus, cnt, remaining, n_remaining, s_idx, s_gain):
    """Phase 2 for F'. `remaining` holds local indices and is compacted in place. Returns (len(S), queries)."""
    m = 0
    queries = 0
    cs = 0.0
    for t in range(len(taus)):
        tau = taus[t]
        w = 0
        for r in range(n_remaining):
            j = remaining[r]
            cu = a[j]
            if cs + cu > budget:
                continue
            kj = k[j]
            c = cnt[kj]
            g = cu + beta * (sq[c + 1] - sq[c])
            queries += 1
            if g >= tau * cu:
                s_idx[m] = j
                s_gain[m] = g
                m += 1
                cs += cu
                cnt[kj] = c + 1
            else:
                remaining[w] = j
                w += 1
        n_remaining = w
        if n_remaining == 0:
            break
    return m, queries


@functools.lru_cache(maxsize=None)
def compiled_kernels():
    """(estimate_pass, threshold_passes) compiled by numba, or None when numba cannot be imported.

    Compiled on first use (about 1 s). No on-disk cache: numba's cache is keyed by the module name, which breaks
    when the file is also run as a script, and one second per process is cheap next to training.
    """
    try:
        import numba
    except ImportError:
        return None
    jit = numba.njit(nogil=True)
    return jit(estimate_pass), jit(threshold_passes)


def numba_available() -> bool:
    return compiled_kernels() is not None
