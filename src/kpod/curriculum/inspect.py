"""Schedule inspector: what the progressive schedule did at each stage, as a table and as a plot of D(t)
against the realised total difficulty.

    kpod schedule runs/default            # prints the table; the plot is curriculum/schedule.png
"""

from __future__ import annotations

from pathlib import Path


def schedule_table(schedule: dict) -> str:
    """Markdown table: per stage the target D(t), budget, chosen increase, choices per cluster, c_i distribution."""
    s = schedule["settings"]
    head = (f"B = {s['total_difficulty']:.1f}, C0 = {s['c0']:.1f} ({'raised to the initial difficulty' if s['c0_clamped'] else 'as set'}), "
            f"T = {s['T']}, p = {s['p']}, beta = {s['beta']}, eps = {s['eps']}, questions = {s['num_questions']}\n\n")
    rows = ["| stage | phase | D(t) | budget | chosen increase | realised | chosen | per cluster | too costly | mean c | c histogram |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in schedule["records"]:
        rows.append(
            f"| {r['stage']} | {r['phase']} | {r['target_difficulty']:.1f} | {_f(r.get('budget'))} | "
            f"{_f(r.get('difficulty_increase'))} | {r['realised_difficulty']:.1f} | {r.get('num_selected', '')} | "
            f"{r.get('selected_per_cluster', '')} | {r.get('num_too_costly', '')} | {r['given_steps_mean']:.2f} | "
            f"{r['given_steps_histogram']} |"
        )
    return head + "\n".join(rows)


def _f(x) -> str:
    return "" if x is None else f"{x:.1f}"


def plot_schedule(schedule: dict, path: Path) -> None:
    """D(t) (the target) and the realised total difficulty per stage, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = schedule["records"]
    stages = [r["stage"] for r in recs]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(stages, [r["target_difficulty"] for r in recs], "o--", label="D(t) target")
    ax.plot(stages, [r["realised_difficulty"] for r in recs], "s-", label="realised sum of h_i(t)")
    ax.axhline(schedule["settings"]["total_difficulty"], color="grey", lw=0.8, label="B (everything generated)")
    ax.set_xlabel("stage t")
    ax.set_ylabel("total difficulty")
    ax.set_title("KPOD progressive schedule")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
