"""Scaling benchmark of FTGP on KPOD's stage objective F' (docs/ftgp.md section 4, items 4 and 5).

Instances: n questions, K = 5 clusters drawn uniformly, costs a_i ~ Gamma(shape 2, scale 1), budget B = 30 % of
sum(a), beta = 12. For every n and eps it records the median wall time of `ftgp_select_detailed` (numba compile
time excluded and measured separately, in a fresh cache), queries/n, the number of thresholds and F', and the
same for the lazy cost-benefit greedy + best singleton; then the log-log slope of time against n.

    PYTHONPATH=src python bench/ftgp_scaling.py                     # full run, a few minutes on 2 cores
    PYTHONPATH=src python bench/ftgp_scaling.py --sizes 1000 10000 --repeats 2 --out-dir runs/ftgp_scaling

Writes results/ftgp_scaling.json (numbers plus machine info) and results/ftgp_scaling.md (tables).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A private numba cache makes the first call a real compilation, so its cost can be reported on its own.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="ftgp-bench-numba-"))

import numpy as np  # noqa: E402

from kpod.curriculum.ftgp import ftgp_select_detailed, max_num_thresholds, numba_available  # noqa: E402
from kpod.curriculum.greedy import greedy_select_detailed  # noqa: E402
from kpod.evaluation.evaluate import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NUM_CLUSTERS, BETA, BUDGET_FRACTION, GAMMA_SHAPE = 5, 12.0, 0.3, 2.0
GREEDY_LIMIT_S = 60.0


def make_instance(n: int, seed: int):
    rng = np.random.default_rng(seed)
    cost = rng.gamma(GAMMA_SHAPE, 1.0, n)
    cluster = rng.integers(0, NUM_CLUSTERS, n)
    return cost, cluster, BUDGET_FRACTION * float(cost.sum())


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def machine_info() -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba_version,
        "git_commit": commit,
        "git_uncommitted_changes": dirty,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def compile_time() -> float:
    """First call (compiles both kernels) minus a warm call, on a small instance."""
    cost, cluster, budget = make_instance(2000, 0)
    start = time.perf_counter()
    ftgp_select_detailed(cost, cluster, budget, BETA, 0.1)
    first = time.perf_counter() - start
    warm, _, _ = timed(lambda: ftgp_select_detailed(cost, cluster, budget, BETA, 0.1), 3)
    return first - warm


def loglog_slope(sizes, times) -> float | None:
    if len(sizes) < 2:
        return None
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


def predict_time(timed_runs, n) -> float | None:
    """Extrapolate from the last two timed sizes with their log-log slope (at least 1)."""
    if not timed_runs:
        return None
    if len(timed_runs) == 1:
        (n0, t0), slope = timed_runs[-1], 1.0
    else:
        (n1, t1), (n0, t0) = timed_runs[-2:]
        slope = max(1.0, float(np.log(t0 / t1) / np.log(n0 / n1)))
    return t0 * (n / n0) ** slope


def run(sizes, eps_values, repeats, python_max_n, seed) -> dict:
    backend = "numba" if numba_available() else "python"
    result = {
        "config": {
            "sizes": sizes, "eps": eps_values, "num_clusters": NUM_CLUSTERS, "beta": BETA,
            "budget_fraction": BUDGET_FRACTION, "cost_distribution": f"Gamma(shape={GAMMA_SHAPE}, scale=1)",
            "repeats": repeats, "seed": seed, "instance_seed": "seed + n", "backend": backend,
            "python_backend_max_n": python_max_n, "greedy_time_limit_s": GREEDY_LIMIT_S,
            "greedy_skip_rule": "skip a size when extrapolation from the last two timed sizes exceeds the limit",
        },
        "machine": machine_info(),
        "numba_compile_s": compile_time() if backend == "numba" else None,
        "ftgp": [], "greedy": [], "python_backend": [],
    }
    greedy_times = []  # (n, seconds) of the timed greedy runs, to predict whether the next size fits the limit
    for n in sizes:
        cost, cluster, budget = make_instance(n, seed + n)
        reps = repeats if n < 10**6 else max(1, min(repeats, 3))
        greedy_row = {"n": n}
        predicted = predict_time(greedy_times, n)
        if predicted is not None and predicted > GREEDY_LIMIT_S:
            greedy_row.update(skipped=True, reason=f"predicted {predicted:.0f} s > {GREEDY_LIMIT_S:.0f} s")
        else:
            t, times, g = timed(lambda: greedy_select_detailed(cost, cluster, budget, BETA), 1 if n >= 10**5 else reps)
            greedy_times.append((n, t))
            greedy_row.update(
                time_s=t, times_s=times, queries=g.queries, queries_per_n=g.queries / n, value=g.objective,
                cost=g.cost, num_selected=int(g.mask.sum()),
            )
        result["greedy"].append(greedy_row)
        for eps in eps_values:
            t, times, r = timed(lambda: ftgp_select_detailed(cost, cluster, budget, BETA, eps), reps)
            row = {
                "n": n, "eps": eps, "time_s": t, "times_s": times, "queries": r.queries, "queries_per_n": r.queries / n,
                "num_thresholds": r.num_thresholds, "max_num_thresholds": max_num_thresholds(eps),
                "value": r.objective, "cost": r.cost, "budget": budget, "num_selected": int(r.mask.sum()),
                "within_budget": bool(r.cost <= budget),
            }
            if "value" in greedy_row:
                row["value_ratio_vs_greedy"] = r.objective / greedy_row["value"]
                row["query_ratio_vs_greedy"] = r.queries / greedy_row["queries"]
            result["ftgp"].append(row)
            print(f"n={n:>8} eps={eps:<5} time={t:.4f}s queries/n={r.queries / n:.1f} F'={r.objective:.1f}", flush=True)
            if backend == "numba" and n <= python_max_n:
                tp, _, rp = timed(lambda: ftgp_select_detailed(cost, cluster, budget, BETA, eps, backend="python"), 1)
                same = bool(np.array_equal(rp.mask, r.mask))
                result["python_backend"].append({"n": n, "eps": eps, "time_s": tp, "identical_set": same})
    result["slopes"] = {}
    for eps in eps_values:
        rows = [row for row in result["ftgp"] if row["eps"] == eps]
        big = [row for row in rows if row["n"] >= 10**4]
        result["slopes"][str(eps)] = {
            "all_sizes": loglog_slope([r["n"] for r in rows], [r["time_s"] for r in rows]),
            "n_ge_1e4": loglog_slope([r["n"] for r in big], [r["time_s"] for r in big]),
        }
    timed_greedy = [g for g in result["greedy"] if "time_s" in g]
    result["slopes"]["greedy"] = {
        "all_sizes": loglog_slope([g["n"] for g in timed_greedy], [g["time_s"] for g in timed_greedy])
    }
    return result


def to_markdown(result: dict) -> str:
    m, c = result["machine"], result["config"]
    lines = [
        "# FTGP scaling on KPOD's F'",
        "",
        f"Instances: K = {c['num_clusters']} clusters, a_i ~ {c['cost_distribution']}, B = "
        f"{c['budget_fraction']:.0%} of sum(a), beta = {c['beta']}; backend {c['backend']}; median of "
        f"{c['repeats']} runs (at most 3 at n = 1e6); greedy: 1 run for n >= 1e5.",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores; Python {m['python']}, numpy {m['numpy']}, "
        f"numba {m['numba']}; commit {m['git_commit'] or 'none'}"
        f"{' (plus uncommitted changes)' if m['git_uncommitted_changes'] else ''}; {m['date_utc']}; "
        f"load average at start {m['load_average_1_5_15min']} (the cores are shared, so times are noisy).",
        f"numba compile time (excluded below): {result['numba_compile_s']:.2f} s."
        if result["numba_compile_s"] is not None else "numba not available: pure-Python passes.",
        "",
        "| n | eps | FTGP time (s) | queries/n | thresholds (max) | F' FTGP | F' greedy | value ratio | "
        "greedy time (s) | greedy queries/n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    greedy = {g["n"]: g for g in result["greedy"]}
    for r in result["ftgp"]:
        g = greedy[r["n"]]
        g_value = f"{g['value']:.1f}" if "value" in g else "skipped"
        ratio = f"{r['value_ratio_vs_greedy']:.4f}" if "value_ratio_vs_greedy" in r else "-"
        g_time = f"{g['time_s']:.3f}" if "time_s" in g else g.get("reason", "-")
        g_q = f"{g['queries_per_n']:.2f}" if "queries_per_n" in g else "-"
        lines.append(
            f"| {r['n']:,} | {r['eps']} | {r['time_s']:.4f} | {r['queries_per_n']:.1f} | "
            f"{r['num_thresholds']} ({r['max_num_thresholds']}) | {r['value']:.1f} | {g_value} | {ratio} | "
            f"{g_time} | {g_q} |"
        )
    lines += ["", "Log-log slope of FTGP time against n (1 = linear):", ""]
    lines += ["| eps | all sizes | n >= 1e4 |", "|---|---|---|"]
    for eps in c["eps"]:
        s = result["slopes"][str(eps)]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {eps} | {fmt(s['all_sizes'])} | {fmt(s['n_ge_1e4'])} |")
    if result["slopes"]["greedy"]["all_sizes"] is not None:
        lines.append(f"\nGreedy log-log slope (timed sizes): {result['slopes']['greedy']['all_sizes']:.2f}.")
    if result["python_backend"]:
        lines += ["", "Pure-Python passes (the fallback without numba), 1 run:", "",
                  "| n | eps | time (s) | identical set |", "|---|---|---|---|"]
        for p in result["python_backend"]:
            lines.append(f"| {p['n']:,} | {p['eps']} | {p['time_s']:.3f} | {p['identical_set']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--repeats", type=int, default=5, help="runs per point; the median is reported")
    parser.add_argument("--python-max-n", type=int, default=10**4, help="also time the pure-Python path up to this n")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    result = run(sorted(args.sizes), args.eps, args.repeats, args.python_max_n, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "ftgp_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "ftgp_scaling.md").write_text(to_markdown(result))
    print(to_markdown(result), file=sys.stderr)


if __name__ == "__main__":
    main()
