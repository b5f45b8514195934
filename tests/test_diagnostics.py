"""Output diagnostics: equations found and checked in answers, per-evaluation summaries, the bench table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kpod.evaluation.diagnostics import (
    chain_value,
    check_equations,
    diagnose_choice_predictions,
    diagnose_file,
    diagnose_predictions,
    reasoned_choice,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, expected", [
    ("14 * 6 = 84. The answer is 84", (1, 1)),
    ("14 * 6 = 80. 80 / 14 = 6.", (0, 2)),
    ("2 + 3 * 4 = 14", (1, 1)),            # precedence
    ("2 + 3 * 4 = 20", (0, 1)),
    ("8 - 2 - 3 = 3 and 12 / 2 / 3 = 2", (2, 2)),  # left to right
    ("$1,200 / 4 = $300", (1, 1)),         # separators and currency
    ("5 x 3 = 15, 3 × 3 = 9", (2, 2)),
    ("2 / 3 = 0.67", (1, 1)),              # rounding as rationales show it
    ("7 / 0 = 1", (0, 1)),
    ("10 -2 = 8; 2 * -3 = -6; 3 - -2 = 5", (3, 3)),
    ("(3 + 4) * 2 = 14", (0, 0)),          # parentheses: not counted
    ("He has 5 apples = 5", (0, 0)),       # no operation: not an equation
    ("", (0, 0)),
])
def test_equations_are_found_and_checked(text, expected):
    assert check_equations(text) == expected


def test_chain_value():
    assert chain_value("1 + 2 * 3 - 4 / 2") == pytest.approx(5.0)
    assert chain_value("6 / 0") is None


def test_diagnose_predictions_summarises_an_evaluation():
    rows = [{"output": "2 + 2 = 4. The answer is 4", "correct": True, "extracted": "4"},
            {"output": "3 * 3 = 6. 6 + 1 = 7. The answer is 7", "correct": False, "extracted": "7",
             "looks_truncated": True},
            {"output": "I do not know", "correct": False, "extracted": None}]
    d = diagnose_predictions(rows)
    assert (d["n"], d["correct"], d["no_answer"]) == (3, 1, 1)
    assert d["looks_truncated"] is None  # two rows predate the field: no count rather than an under-count
    assert d["equations_per_answer"] == 1.0 and d["equations_true_pct"] == pytest.approx(66.7)
    assert d["answers_all_equations_true_pct"] == pytest.approx(66.7)  # the answer with no equation counts as clean
    assert d["answer_sentence_pct"] is None and d["cut_off_pct"] is None  # not recorded by these rows
    with pytest.raises(ValueError):
        diagnose_predictions([])


def test_diagnose_predictions_counts_answer_sentences_and_cut_off_answers():
    rows = [{"output": "1 + 1 = 2. Therefore, the answer is 2.", "correct": True, "extracted": "2",
             "source": "strict", "looks_truncated": False},
            {"output": "1 + 1 = 2. To find the total, we add 1 + 1 = 2. To find the total, we", "correct": False,
             "extracted": "2", "source": "flexible", "looks_truncated": True},
            {"output": "So he has 2 apples.", "correct": True, "extracted": "2", "source": "flexible",
             "looks_truncated": False},
            {"output": "Nothing", "correct": False, "extracted": None, "source": None, "looks_truncated": False}]
    d = diagnose_predictions(rows)
    assert d["answer_sentence_pct"] == 25.0 and d["cut_off_pct"] == 25.0


CHOICES = ["bank", "library", "department store", "mall", "new york"]


@pytest.mark.parametrize("text, expected", [
    ("The answer must be a place. Of the above choices, only a mall is secure. Therefore, the answer is E.", "D"),
    ("Of the above choices, only banks are secure. So the answer is (a) bank.", "A"),    # plural
    ("Only a bank or a mall. Therefore, the answer is A.", None),                       # two choices
    ("A bank is secure. It is the best place. Therefore, the answer is A.", None),       # not in the last sentence
    ("The answer is (A) bank.", None),                                                   # no reasoning
    ("Of course, a library is secure. Of course, a mall", "D"),      # cut off, no trigger: its last words count
])
def test_reasoned_choice(text, expected):
    assert reasoned_choice(text, CHOICES) == expected


def test_diagnose_choice_predictions():
    choices, gold = {"q1": CHOICES, "q2": CHOICES, "q3": CHOICES}, {"q1": "D", "q2": "A", "q3": "B"}
    rows = [{"id": "q1", "output": "Only a mall is. Therefore, the answer is E.", "extracted": "E", "correct": False},
            {"id": "q2", "output": "Only a bank is. Therefore, the answer is A.", "extracted": "A", "correct": True},
            {"id": "q3", "output": "Nothing to say", "extracted": "E", "correct": False}]
    d = diagnose_choice_predictions(rows, choices, gold)
    assert (d["n"], d["correct"], d["reasoning_settles_pct"]) == (3, 1, 66.7)
    assert d["reasoning_right_pct"] == 66.7          # q1 and q2 settle on their gold choice
    assert d["letter_follows_reasoning_pct"] == 50.0  # q1's letter leaves its reasoning's choice
    assert d["most_common_letter_pct"] == 66.7        # E twice


def test_bench_reads_multiple_choice_answers(tmp_path, shared_data):
    from kpod.data.datasets import load_split

    test_q, train_q = load_split("csqa", "test", shared_data)[:2], load_split("csqa", "train", shared_data)[:1]
    runs = tmp_path / "runs" / "exp"
    _cell(runs, "csqa-plain-s0", {"plain-test": ("csqa", [f"Only {q.choices[0]}. Therefore, the answer is A."
                                                          for q in test_q])}, [f"Only {train_q[0].choices[1]}."])
    cell = runs / "csqa-plain-s0"
    for path, qs, letter in ((cell / "eval" / "plain-test" / "predictions.jsonl", test_q, {"extracted": "A"}),
                             (cell / "data" / "rationales.jsonl", train_q, {})):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "id": q.id, **letter}) + "\n" for r, q in zip(rows, qs)))
    out = tmp_path / "diag"
    subprocess.run([sys.executable, str(ROOT / "bench" / "output_diagnostics.py"), str(runs), "--out", str(out),
                    "--data-dir", str(shared_data)], check=True, capture_output=True)
    res = json.loads(out.with_suffix(".json").read_text())
    plain = res["aggregate"]["plain"]["csqa"]
    assert (plain["reasoning_settles_pct"], plain["letter_follows_reasoning_pct"]) == (100.0, 100.0)
    assert plain["reasoning_right_pct"] == 50.0 * sum(q.answer == "A" for q in test_q)
    (rationales,) = res["teacher_rationales"]["csqa"]
    assert rationales["reasoning_settles_pct"] == 100.0
    assert rationales["reasoning_right_pct"] == (100.0 if train_q[0].answer == "B" else 0.0)
    assert "| plain | csqa | 0/2 | 100.0 |" in out.with_suffix(".md").read_text()


def test_diagnose_file_keeps_unicode_line_separators_inside_answers(tmp_path):
    # A raw U+2028 (as GPT-3.5 rationales have) ends a line for str.splitlines() but not for JSON Lines.
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"output": "1 + 1 = 2\u2028so 2", "correct": True, "extracted": "2"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert diagnose_file(path)["equations_true_pct"] == 100.0


def _cell(runs: Path, name: str, evals: dict[str, tuple[str, list[str]]], rationales: list[str],
          method: str = "plain", given_steps: list | None = None) -> None:
    cell = runs / name
    (cell / "data").mkdir(parents=True)
    (cell / "summary.json").write_text("{}")
    (cell / "config.yaml").write_text(json.dumps({"train": {"method": method, "epochs": 2}}))
    if given_steps is not None:
        (cell / "curriculum").mkdir()
        (cell / "curriculum" / "schedule.json").write_text(json.dumps({"given_steps": given_steps}))
    (cell / "data" / "rationales.jsonl").write_text("".join(json.dumps({"rationale": r}) + "\n" for r in rationales))
    for ev, (dataset, outputs) in evals.items():
        (cell / "eval" / ev).mkdir(parents=True)
        (cell / "eval" / ev / "results.json").write_text(json.dumps({"dataset": dataset, "split": "test"}))
        (cell / "eval" / ev / "predictions.jsonl").write_text("".join(
            json.dumps({"output": o, "correct": False, "extracted": "1", "looks_truncated": o.endswith(" we"),
                        "source": "strict" if "answer is" in o else "flexible"}) + "\n" for o in outputs))


def test_bench_tabulates_an_experiment(tmp_path):
    runs = tmp_path / "runs" / "exp"
    teacher = ["1 + 1 = 2. The answer is 2"]
    _cell(runs, "gsm8k-plain-s0", {"plain-test": ("gsm8k", ["1 + 1 = 2", "1 + 1 = 3"]),
                                   "zero-shot-asdiv-test": ("asdiv", ["2 * 2 = 4"])}, teacher)
    _cell(runs, "gsm8k-plain-s1", {"plain-test": ("gsm8k", ["1 + 1 = 2. The answer is 2", "1 + 1 = 2 so we"])},
          teacher)
    # Two stages of one epoch each: the first gives example 0 a leading step, so its opening is trained in 1 of 2.
    _cell(runs, "gsm8k-kpod-s0", {"kpod-test": ("gsm8k", ["1"])}, teacher, "kpod", [[1, 0], [0, 0]])
    (runs / "gsm8k-kpod-s1").mkdir()  # unfinished: no summary.json, left out
    out = tmp_path / "diag"
    subprocess.run([sys.executable, str(ROOT / "bench" / "output_diagnostics.py"), str(runs), "--out", str(out)],
                   check=True, capture_output=True)
    res = json.loads(out.with_suffix(".json").read_text())
    plain = res["aggregate"]["plain"]["gsm8k"]
    assert plain["seeds"] == [0, 1] and plain["equations_true_pct"] == 75.0  # mean of 50 % and 100 %
    assert plain["opening_step_epochs"] == 2.0 and res["aggregate"]["kpod"]["gsm8k"]["opening_step_epochs"] == 1.5
    assert res["aggregate"]["kpod"]["gsm8k"]["seeds"] == [0]
    assert (plain["answer_sentence_pct"], plain["cut_off_pct"]) == (25.0, 25.0)  # means of 0 and 50 % each
    assert res["aggregate"]["zero_shot"]["asdiv (from gsm8k)"]["equations_per_answer"] == 1.0
    (gsm8k_rationales,) = res["teacher_rationales"]["gsm8k"]  # one training set, shared by both methods
    assert gsm8k_rationales["equations_true_pct"] == 100.0 and sorted(gsm8k_rationales["methods"]) == ["kpod", "plain"]
    assert "| plain | gsm8k |" in out.with_suffix(".md").read_text()


def test_bench_merge_keeps_cells_whose_run_folders_are_gone(tmp_path):
    runs, out = tmp_path / "runs" / "exp", tmp_path / "diag"
    bench = [sys.executable, str(ROOT / "bench" / "output_diagnostics.py"), str(runs), "--out", str(out)]
    _cell(runs, "gsm8k-plain-s0", {"plain-test": ("gsm8k", ["1 + 1 = 2"])}, ["1 + 1 = 2. The answer is 2"])
    subprocess.run(bench, check=True, capture_output=True)
    shutil.rmtree(runs / "gsm8k-plain-s0")
    report = json.loads(out.with_suffix(".json").read_text())  # as written before the answer-sentence columns
    for row in report["evaluations"]:
        del row["answer_sentence_pct"], row["cut_off_pct"]
    out.with_suffix(".json").write_text(json.dumps(report))
    # a multi-rationale method: a second training set, with a wrong equation in one of its two rationales
    _cell(runs, "gsm8k-scotd-s0", {"scotd-test": ("gsm8k", ["2 + 2 = 5"])},
          ["1 + 1 = 2. The answer is 2", "1 + 1 = 3. The answer is 2"], "scotd")
    subprocess.run(bench + ["--merge"], check=True, capture_output=True)
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["kept_from_previous_report"] == ["gsm8k-plain-s0"]
    assert res["aggregate"]["plain"]["gsm8k"]["equations_true_pct"] == 100.0
    assert res["aggregate"]["scotd"]["gsm8k"]["equations_true_pct"] == 0.0
    assert res["aggregate"]["plain"]["gsm8k"]["answer_sentence_pct"] is None  # unknown for the kept row, not 0
    assert res["aggregate"]["scotd"]["gsm8k"]["answer_sentence_pct"] == 0.0
    sets = sorted(res["teacher_rationales"]["gsm8k"], key=lambda t: t["n"])
    assert [(t["n"], t["methods"], t["equations_true_pct"]) for t in sets] == [(1, ["plain"], 100.0),
                                                                             (2, ["scotd"], 50.0)]
    assert "Kept from the previous report (run folders gone): gsm8k-plain-s0." in out.with_suffix(".md").read_text()
    subprocess.run(bench, check=True, capture_output=True)  # without --merge the gone cell is dropped
    assert "plain" not in json.loads(out.with_suffix(".json").read_text())["aggregate"]
