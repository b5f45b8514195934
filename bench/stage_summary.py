"""What KPOD's stages produced in each cell of an experiment: the token weights (mean, spread, whether the run
flagged them as nearly one constant, keep ratio at the first, tenth and last weighting step, mean weight of digits,
operators and other words) and the schedule (per
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

SHOWN_CLASSES = ("digit", "operator", "other_word")


def cell_summary(cell: Path) -> dict | None:
    weights_file, schedule_file = cell / "weighting" / "stats.json", cell / "curriculum" / "schedule.json"
    if not (weights_file.exists() or schedule_file.exists()):
        return None  # not a KPOD-family cell
    out: dict = {"cell": cell.name}
    if weights_file.exists():
        stats = json.loads(weights_file.read_text())
        keep = stats["keep_ratio"]
        out["weights"] = {"mean": round(stats["mean_weight"], 4), "std": round(stats["weight_std"], 4),
                          "nearly_constant": stats.get("weights_nearly_constant"),
                          "keep_ratio_steps_1_10_last": [round(keep[i], 3) for i in (0, min(9, len(keep) - 1), -1)]}
        summary_file = cell / "weighting" / "summary.json"
        if summary_file.exists():  # whether the weights are the paper's pattern: digits and operators high, words low
            classes = json.loads(summary_file.read_text())["classes"]
            out["weights"]["class_means"] = {k: None if classes[k]["mean_weight"] is None else
                                             round(classes[k]["mean_weight"], 3) for k in SHOWN_CLASSES}
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
          "schedule: phase (target; FTGP selected of candidates) per stage |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        w = c.get("weights", {})
        stages = "; ".join(f"{s['phase']} ({s['target']}" + (f"; {s['selected']} of {s['candidates']}" if s["selected"] is not None else "") + ")"
                           for s in c.get("schedule", []))
        classes = " / ".join("–" if v is None else str(v) for v in w.get("class_means", {}).values()) or "–"
        md.append(f"| {c['cell']} | {w.get('mean', '–')} | {w.get('std', '–')} | {w.get('nearly_constant', '–')} | "
                  f"{' / '.join(map(str, w.get('keep_ratio_steps_1_10_last', []))) or '–'} | {classes} | {stages or '–'} |")
    Path(a.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
