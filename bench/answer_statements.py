"""How many released teacher rationales end with their own answer statement ("... = 48. The answer is 48"), which
`data.strip_answer_statement` cuts: per rationale source and dataset, over the correct rationales of the train split.

    KPOD_DATA_DIR=path/to/data python bench/answer_statements.py --out results/answer_statements
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.config import load_config  # noqa: E402
from kpod.data.rationales import import_rationales, only_correct, without_answer_statements  # noqa: E402
from kpod.pipeline import collect_rationales  # noqa: E402
from kpod.evaluation.evaluate import git_commit  # noqa: E402

SOURCES = [("gsm8k", "llama3"), ("svamp", "gpt35"), ("svamp", "palm"), ("asdiv", "gpt35"), ("csqa", "palm")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "results" / "answer_statements"))
    a = ap.parse_args()
    rows = []
    for dataset, source in SOURCES:
        correct = only_correct(import_rationales(dataset, source)[0])
        cut = without_answer_statements(correct)[1]
        rows.append({"dataset": dataset, "source": source, "correct_rationales": len(correct), "statement_cut": cut})
    # The default run (configs/default.yaml): its kept rationales, one per question of its training questions.
    report = collect_rationales(load_config(str(ROOT / "configs" / "default.yaml")))[2]
    default_run = {"kept_rationales": report["kept_rationales"], "statement_cut": report["answer_statements_cut"]}
    out = {"benchmark": "closing answer statements in the released rationales", "commit": git_commit(), "rows": rows,
           "default_run": default_run}
    Path(a.out + ".json").write_text(json.dumps(out, indent=1))
    md = ["# Closing answer statements in the released teacher rationales", "",
          f"Correct rationales of each train split, and how many end with an answer statement that "
          f"`data.strip_answer_statement` cuts (`kpod.data.rationales.split_answer_statement`); commit {out['commit']}. "
          "`bench/answer_statements.py`.", "", "| dataset | source | correct rationales | statement cut |", "|---|---|---|---|"]
    md += [f"| {r['dataset']} | {r['source']} | {r['correct_rationales']} | {r['statement_cut']} |" for r in rows]
    md += ["", f"The default run (`configs/default.yaml`): {default_run['statement_cut']} of its "
           f"{default_run['kept_rationales']} kept rationales cut."]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
