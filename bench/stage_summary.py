"""What KPOD's stages produced in each cell of an experiment: the token weights (mean, spread, whether the run
flagged them as nearly one constant, keep ratio at the first, tenth and last weighting step, mean weight of digits,
operators and other words, share of the tokens within 0.01 of either end of (0, 1)) and the schedule (per
stage: phase, difficulty target, FTGP candidates and how many it selected). Reads the cells' files only.

    python bench/stage_summary.py runs/ood-gsm8k-cpu --out results/ood-gsm8k-cpu-stages
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.evaluation.evaluate import git_commit  # noqa: E402
from kpod.weighting.artefact import load_weights_jsonl  # noqa: E402

SHOWN_CLASSES = ("digit", "operator", "other_word")
# Within this of 0 or 1 a weight sits at the module's soft bound (0.0025 / 0.9975 by default): the token is as good as
# masked from, or fully kept in, the weighted loss.
NEAR_BOUND = 0.01


def bound_shares(weights_jsonl: Path) -> list[float]:
    """Shares of all rationale tokens with weight below NEAR_BOUND and above 1 - NEAR_BOUND."""
    weights = [x for row in load_weights_jsonl(weights_jsonl) for x in row.weights]
    if not weights:
        return [None, None]
    low, high = sum(x < NEAR_BOUND for x in weights), sum(x > 1 - NEAR_BOUND for x in weights)
    return [round(low / len(weights), 3), round(high / len(weights), 3)]


def cell_summary(cell: Path) -> dict | None:
    weights_file, schedule_file = cell / "weighting" / "stats.json", cell / "curriculum" / "schedule.json"
    if not (weights_file.exists() or schedule_file.exists()):
        return None  # not a KPOD-family cell
    out: dict = {"cell": cell.name}
    if weights_file.exists():
        stats = json.loads(weights_file.read_text())
        keep = stats["keep_ratio"]
        summary_file = cell / "weighting" / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        std = stats.get("weight_std", summary.get("weight_std"))  # runs before the warning kept it in summary.json only
        out["weights"] = {"mean": round(stats["mean_weight"], 4), "std": None if std is None else round(std, 4),
                          "nearly_constant": stats.get("weights_nearly_constant"),
                          "keep_ratio_steps_1_10_last": [round(keep[i], 3) for i in (0, min(9, len(keep) - 1), -1)]}
        if summary:  # whether the weights are the paper's pattern: digits and operators high, words low
            classes = summary["classes"]
            out["weights"]["class_means"] = {k: None if classes[k]["mean_weight"] is None else
                                             round(classes[k]["mean_weight"], 3) for k in SHOWN_CLASSES}
        if (cell / "weighting" / "weights.jsonl").exists():
            out["weights"]["share_low_high"] = bound_shares(cell / "weighting" / "weights.jsonl")
    if schedule_file.exists():
        records = json.loads(schedule_file.read_text())["records"]
        out["schedule"] = [{"stage": r["stage"], "phase": r["phase"], "target": round(r["target_difficulty"], 2),
                            "candidates": r.get("num_candidates"), "selected": r.get("num_selected")} for r in records]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", help="an experiment's run folder, e.g. runs/ood-gsm8k-cpu")
    ap.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    a = ap.parse_args()
    cells = [s for s in (cell_summary(c) for c in sorted(Path(a.runs).iterdir()) if c.is_dir()) if s]
    out = {"experiment": Path(a.runs).name, "commit": git_commit(), "cells": cells}
    Path(a.out).with_suffix(".json").write_text(json.dumps(out, indent=1))
    md = [f"# {out['experiment']}: what KPOD's stages produced", "",
          f"Read from the cells' run folders (weighting/stats.json and summary.json, curriculum/schedule.json); commit {out['commit']}. "
          "`bench/stage_summary.py`.", "",
          "| cell | weights: mean | std | nearly constant | keep ratio, steps 1 / 10 / last | digit / operator / word | "
          f"tokens below {NEAR_BOUND} / above {1 - NEAR_BOUND} | schedule: phase (target; FTGP selected of candidates) per stage |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        w = c.get("weights", {})
        stages = "; ".join(f"{s['phase']} ({s['target']}" + (f"; {s['selected']} of {s['candidates']}" if s["selected"] is not None else "") + ")"
                           for s in c.get("schedule", []))
        classes = " / ".join("–" if v is None else str(v) for v in w.get("class_means", {}).values()) or "–"
        shown = ["–" if w.get(k) is None else w[k] for k in ("mean", "std", "nearly_constant")]
        md.append(f"| {c['cell']} | {' | '.join(map(str, shown))} | "
                  f"{' / '.join(map(str, w.get('keep_ratio_steps_1_10_last', []))) or '–'} | {classes} | "
                  f"{' / '.join(map(str, w.get('share_low_high', []))) or '–'} | {stages or '–'} |")
    Path(a.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
