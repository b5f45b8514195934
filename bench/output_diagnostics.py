"""What the students of an experiment write, per method and evaluated dataset (mean over seeds): equations per
answer, the share of them that is arithmetically true, answers with every equation true, output length, answers that
end with the answer sentence and answers cut off by the generation limit. Beside them, the same for the teacher
rationales each student was trained on, and for cells with a progressive schedule the epochs in which a rationale's
opening step is trained on (a plain run trains on it every epoch). For multiple-choice datasets (CommonsenseQA),
also which choice the reasoning settles on, whether it is right, and whether the letter given follows it. Reads the
cells' files only: no model is run (the choices come from the data folder: KPOD_DATA_DIR or --data-dir). See
kpod.evaluation.diagnostics for what counts as an equation and as a settled choice.

    python bench/output_diagnostics.py runs/ood-gsm8k-cpu --out results/ood-gsm8k-cpu-diagnostics [--merge]

--merge keeps the rows of an earlier OUT.json for cells whose run folders are gone (run folders are not kept
forever; the report is), marked with the commit of the report they come from.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.data.answers import answer_type  # noqa: E402
from kpod.data.datasets import load_split  # noqa: E402
from kpod.data.records import read_jsonl  # noqa: E402
from kpod.evaluation.diagnostics import (  # noqa: E402
    check_equations,
    diagnose_choice_predictions,
    diagnose_predictions,
)
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.experiment import ZERO_SHOT, column_of  # noqa: E402

CELL = re.compile(r"^(?P<dataset>[^-]+)-(?P<method>.+)-s(?P<seed>\d+)$")
SHOWN = ("correct", "equations_per_answer", "equations_true_pct", "answers_all_equations_true_pct",
         "mean_output_chars", "answer_sentence_pct", "cut_off_pct", "opening_step_epochs")
CHOICE_SHOWN = ("reasoning_settles_pct", "reasoning_right_pct", "letter_follows_reasoning_pct",
                "most_common_letter_pct")


class Choices:
    """The choices and gold letter of each question of a multiple-choice dataset, read once per dataset and split."""

    def __init__(self, data_dir: str | None):
        self.data_dir, self.loaded = data_dir, {}

    def __call__(self, dataset: str, split: str) -> tuple[dict, dict]:
        if (dataset, split) not in self.loaded:
            questions = load_split(dataset, split, self.data_dir)
            self.loaded[dataset, split] = ({q.id: q.choices for q in questions}, {q.id: q.answer for q in questions})
        return self.loaded[dataset, split]


def teacher_rationales(cell: Path, dataset: str, choices: Choices) -> dict | None:
    """Equations in the rationales a cell trained on (data/rationales.jsonl of its run); for a multiple-choice
    dataset, also how often a rationale settles on one choice and on the right one."""
    path = cell / "data" / "rationales.jsonl"
    if not path.exists():
        return None
    rows = [row for _, row in read_jsonl(path)]
    texts = [row["rationale"] for row in rows]
    checks = [check_equations(t) for t in texts]
    total = sum(n for _, n in checks)
    stats = {"n": len(texts), "equations_per_answer": round(total / len(texts), 2),
             "equations_true_pct": round(100.0 * sum(t for t, _ in checks) / total, 1) if total else None,
             "answers_all_equations_true_pct": round(100.0 * sum(t == n for t, n in checks) / len(texts), 1),
             "mean_output_chars": round(statistics.mean(len(t) for t in texts), 1)}
    if answer_type(dataset) == "choice":  # the rationales read as answers: their reasoning, the letter they state
        as_answers = [{"id": row["id"], "output": row["rationale"], "extracted": row.get("answer"),
                       "correct": row.get("correct")} for row in rows]
        found = diagnose_choice_predictions(as_answers, *choices(dataset, "train"))
        stats.update({k: found[k] for k in ("reasoning_settles_pct", "reasoning_right_pct")})
    return stats


def opening_step_epochs(cell: Path) -> float | None:
    """Epochs, averaged over examples, whose schedule stage gives no leading steps, so that the student is trained
    to write the rationale from its first step: every epoch without a schedule; None for the curricula that choose
    examples instead (kpod_acl, kpod_spl, kpod_icl)."""
    schedule, config = cell / "curriculum" / "schedule.json", cell / "config.yaml"
    if not config.exists():
        return None
    train = yaml.safe_load(config.read_text())["train"]
    if schedule.exists():
        given = json.loads(schedule.read_text())["given_steps"]  # (stages, examples)
        return round(sum(train["epochs"] / len(given) * statistics.mean(g == 0 for g in stage) for stage in given), 2)
    return None if train["method"] in ("kpod_acl", "kpod_spl", "kpod_icl") else float(train["epochs"])


def collect(runs: Path, data_dir: str | None = None) -> tuple[list[dict], dict]:
    """Evaluation rows of the finished cells, and {dataset: [teacher-rationale stats]}: one entry per distinct
    training set (multi-rationale methods train on more rationales per question than the others)."""
    rows, teacher, choices = [], defaultdict(list), Choices(data_dir)
    for cell in sorted(p for p in runs.iterdir() if p.is_dir()):
        m = CELL.match(cell.name)
        if not m or not (cell / "summary.json").exists():
            continue  # not a finished cell
        add_teacher_set(teacher[m["dataset"]], teacher_rationales(cell, m["dataset"], choices), m["method"])
        for ev in sorted((cell / "eval").glob("*/predictions.jsonl")):
            res = json.loads((ev.parent / "results.json").read_text())
            method = ZERO_SHOT if ev.parent.name.startswith("zero-shot") else m["method"]
            predictions = [p for _, p in read_jsonl(ev)]
            row = {"cell": cell.name, "method": method, "seed": int(m["seed"]),
                   "column": column_of(res, m["dataset"]), **diagnose_predictions(predictions),
                   "opening_step_epochs": None if method == ZERO_SHOT else opening_step_epochs(cell)}
            if answer_type(res["dataset"]) == "choice":
                found = diagnose_choice_predictions(predictions, *choices(res["dataset"], res["split"]))
                row.update({k: found[k] for k in CHOICE_SHOWN})
            rows.append(row)
    return rows, teacher


def add_teacher_set(sets: list[dict], stats: dict | None, method: str | None) -> None:
    """Count `stats` under the set with the same numbers, or as a new set; note which methods trained on it."""
    if stats is None:
        return
    same = next((t for t in sets if {k: v for k, v in t.items() if k != "methods"}
                 == {k: v for k, v in stats.items() if k != "methods"}), None)
    if same is None:
        same = {**stats, "methods": []}
        sets.append(same)
    for m in stats.get("methods", [method] if method else []):
        if m not in same["methods"]:
            same["methods"].append(m)


def merge_previous(path: Path, rows: list[dict], teacher: dict) -> list[str]:
    """Add the rows of an earlier report for cells not collected now; returns those cells."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    have = {r["cell"] for r in rows}
    kept = [{**r, "from_report_commit": r.get("from_report_commit", old.get("commit"))}
            for r in old.get("evaluations", []) if r["cell"] not in have]
    rows.extend(kept)
    for dataset, sets in old.get("teacher_rationales", {}).items():
        for stats in sets:
            add_teacher_set(teacher[dataset], stats, None)
    return sorted({r["cell"] for r in kept})


def aggregate(rows: list[dict]) -> dict:
    """{method: {column: {stat: mean over seeds}}}; the zero-shot row once per column (it is seed-independent)."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["method"], r["column"])].setdefault(r["seed"], r)
    out: dict = defaultdict(dict)
    for (method, column), by_seed in groups.items():
        runs = list(by_seed.values()) if method != ZERO_SHOT else list(by_seed.values())[:1]
        stats = {k: round(statistics.mean(v), 2) if (v := [r[k] for r in runs if r.get(k) is not None]) else None
                 for k in SHOWN + CHOICE_SHOWN}
        out[method][column] = {**stats, "n": runs[0]["n"], "seeds": sorted(by_seed) if method != ZERO_SHOT else None}
    return out


def markdown(name: str, agg: dict, teacher: dict, kept: list[str]) -> str:
    lines = [f"# {name}: what the students write", "",
             "Mean over seeds. eq/ans: equations `a op b = c` per answer; true: share of them arithmetically right; "
             "all true: answers with no wrong equation; chars: answer length; answer sentence: answers read after "
             "\"Therefore, the answer is\" (or another answer trigger), as the training targets end; cut off: answers "
             "that stop mid-sentence without one (the generation limit); opening-step epochs: epochs in which "
             "the schedule trains the student to write a rationale from its first step (plain: every epoch). "
             "See kpod.evaluation.diagnostics."
             + (f" Kept from the previous report (run folders gone): {', '.join(kept)}." if kept else ""), "",
             "| method | column | correct | eq/ans | true % | all true % | chars | answer sentence % | cut off % "
             "| opening-step epochs | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for method, cols in agg.items():
        for column, s in sorted(cols.items()):
            lines.append(f"| {method} | {column} | {s['correct']:g}/{s['n']} | {fmt(s['equations_per_answer'], '.2f')} | "
                         f"{fmt(s['equations_true_pct'], '.1f')} | {fmt(s['answers_all_equations_true_pct'], '.1f')} | "
                         f"{fmt(s['mean_output_chars'], '.0f')} | {fmt(s['answer_sentence_pct'], '.1f')} | "
                         f"{fmt(s['cut_off_pct'], '.1f')} | {fmt(s['opening_step_epochs'], '.2f')} | "
                         f"{s['seeds'] or 'one run (greedy)'} |")
    for dataset, sets in teacher.items():
        for t in sorted(sets, key=lambda t: t["n"]):
            trained = f" of {', '.join(sorted(t['methods']))}" if t["methods"] else ""
            lines.append(f"| teacher rationales (training{trained}) | {dataset} | – | "
                         f"{t['equations_per_answer']:.2f} | {fmt(t['equations_true_pct'], '.1f')} | "
                         f"{t['answers_all_equations_true_pct']:.1f} | {t['mean_output_chars']:.0f} | – | – | – | "
                         f"{t['n']} rationales |")
    choice_rows = [(method, column, s) for method, cols in agg.items() for column, s in sorted(cols.items())
                   if s.get("reasoning_settles_pct") is not None]
    if choice_rows:
        lines += ["", "Multiple-choice answers: settles: answers whose reasoning's last sentence names one choice "
                  "alone (\"Of the above choices, only a mall ...\"); right: answers whose reasoning settles on the "
                  "gold choice (% of all); letter follows: answers whose letter is the choice their reasoning settled "
                  "on (% of those that settle and give a letter); top letter: the share of the most frequent letter. "
                  "Mean over seeds.", "",
                  "| method | column | correct | settles % | right % | letter follows % | top letter % | seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        for method, column, s in choice_rows:
            lines.append(f"| {method} | {column} | {s['correct']:g}/{s['n']} | {s['reasoning_settles_pct']:.1f} | "
                         f"{s['reasoning_right_pct']:.1f} | {fmt(s['letter_follows_reasoning_pct'], '.1f')} | "
                         f"{s['most_common_letter_pct']:.1f} | {s['seeds'] or 'one run (greedy)'} |")
        for dataset, sets in teacher.items():
            lines += [f"| teacher rationales (training) | {dataset} | – | {t['reasoning_settles_pct']:.1f} | "
                      f"{t['reasoning_right_pct']:.1f} | – | – | {t['n']} rationales |"
                      for t in sets if t.get("reasoning_settles_pct") is not None]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="an experiment's runs folder (runs/EXPERIMENT)")
    ap.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    ap.add_argument("--merge", action="store_true", help="keep OUT.json's rows of cells whose run folders are gone")
    ap.add_argument("--data-dir", help="data folder for the choices of multiple-choice questions (default "
                    "$KPOD_DATA_DIR or the data shipped with kpod)")
    a = ap.parse_args()
    if not a.runs.is_dir():
        sys.exit(f"error: {a.runs} is not a folder")
    rows, teacher = collect(a.runs, a.data_dir)
    kept = merge_previous(Path(a.out + ".json"), rows, teacher) if a.merge else []
    if not rows:
        sys.exit(f"error: no finished cell with predictions under {a.runs}")
    agg = aggregate(rows)
    out = {"experiment": a.runs.name, "machine": machine(), "commit": git_commit(), "aggregate": agg,
           "teacher_rationales": dict(teacher), "kept_from_previous_report": kept, "evaluations": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=1))
    Path(a.out + ".md").write_text(markdown(a.runs.name, agg, teacher, kept))
    print(Path(a.out + ".md").read_text())


if __name__ == "__main__":
    main()
