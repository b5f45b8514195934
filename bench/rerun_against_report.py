"""Cells of an experiment run again (at a later commit, or on another machine) against the committed report.

`kpod experiment CONFIG --method M --seed S --runs-root OTHER --results-dir OTHER_RESULTS` runs cells again without
touching the committed report; this compares each cell found in both reports question by question: accuracy before
and after, and how many test questions changed outcome (a re-run that reproduces the cell changes none).

    python bench/rerun_against_report.py results/svamp-paper.json RERUN/svamp-paper.json \
        --out results/svamp-paper-rerun/comparison
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def finished(report: dict) -> dict[str, dict]:
    return {c["cell"]: c for c in report["cells"] if c.get("done") and c.get("accuracy")}


def compare(before: dict, after: dict) -> list[dict]:
    rows = []
    old, new = finished(before), finished(after)
    for name in sorted(set(old) & set(new)):
        for column, a in new[name]["accuracy"].items():
            b = old[name]["accuracy"].get(column)
            if b is None:
                continue
            flips = sum(x != y for x, y in zip(b["outcomes"], a["outcomes"])) if "outcomes" in a and "outcomes" in b else None
            rows.append({"cell": name, "column": column, "n": a["n"],
                         "correct_before": b["correct"], "correct_after": a["correct"],
                         "questions_changed": flips, "commit_before": old[name].get("commit"),
                         "commit_after": new[name].get("commit")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="the committed report (results/EXPERIMENT.json)")
    ap.add_argument("after", type=Path, help="the report of the cells run again")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    rows = compare(before, after)
    if not rows:
        raise SystemExit("no finished cell is in both reports")
    shown = [str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else p.name
             for p in (args.before, args.after)]  # no path of this machine in the results
    out = {"bench": "rerun_against_report", "before": shown[0], "after": shown[1], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    md = [f"# Cells run again: {after['experiment']}", "",
          f"`python bench/rerun_against_report.py {shown[0]} {shown[1]}`. Correct answers of each cell in the committed "
          "report (before) and in the run again (after), and the test questions whose outcome changed (where both "
          "reports store each question's outcome; cells that ran before kpod stored them do not).", "",
          "| cell | column | before | after | questions changed | commits |", "|---|---|---|---|---|---|"]
    md += [f"| {r['cell']} | {r['column']} | {r['correct_before']}/{r['n']} | {r['correct_after']}/{r['n']} | "
           f"{'not stored' if r['questions_changed'] is None else r['questions_changed']} | "
           f"{r['commit_before'] or 'not stored'} -> {r['commit_after']} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
