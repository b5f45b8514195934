"""The two pictures of an experiment report (needs matplotlib, `pip install kpod[plots]`):

accuracy   grouped bars, one group per column (dataset), one bar per method, error bars = sample std over seeds
loss       training loss against optimiser step, one panel per training dataset, one line per method (mean over
           the seeds at the steps every seed logged)

Called by `kpod.experiment.report.write_report`; both return the written path, or None when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kpod.experiment.report import table_columns  # noqa: E402


def plot_accuracy(exp, agg: dict, path: Path, label: Callable) -> Path | None:
    methods = [m for m in agg if m != "zero_shot"] + (["zero_shot"] if "zero_shot" in agg else [])
    columns = table_columns(exp, agg, methods)
    if not methods or not columns:
        return None
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(columns) * len(methods) + 2), 3.8))
    x = np.arange(len(columns))
    for k, m in enumerate(methods):
        stats = [agg[m].get(c) for c in columns]
        means = [s["mean"] if s else np.nan for s in stats]
        stds = [s["std"] if s else 0.0 for s in stats]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=label(exp, m))
    ax.set_xticks(x, [c.replace(" (", "\n(") for c in columns])  # "asdiv (from gsm8k)" on two lines
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{exp.name}: mean ± std over seeds {exp.seeds}")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mean_curve(curves: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean loss) over the steps present in every curve; curves: [[{"step", "loss"}, ...], ...]."""
    common = set.intersection(*({p["step"] for p in c} for c in curves)) if curves else set()
    steps = np.array(sorted(common))
    by_curve = [{p["step"]: p["loss"] for p in c} for c in curves]
    return steps, np.array([np.mean([c[s] for c in by_curve]) for s in steps])


def plot_learning_curves(exp, records: list[dict], path: Path, label: Callable) -> Path | None:
    curves: dict[str, dict[str, list]] = {}
    for rec in records:
        curve = (rec.get("train") or {}).get("loss_curve")
        if curve:
            curves.setdefault(rec["dataset"], {}).setdefault(rec["method"], []).append(curve)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (dataset, by_method) in zip(axes[0], curves.items()):
        for method, cs in by_method.items():
            steps, loss = mean_curve(cs)
            if len(steps):
                ax.plot(steps, loss, marker="o", markersize=2, label=f"{label(exp, method)} (n={len(cs)})")
        ax.set_title(f"{dataset}: training loss")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
