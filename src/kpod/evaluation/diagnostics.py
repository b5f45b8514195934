"""What a student's answers look like beyond right or wrong: how many equations it writes and how many of them are
arithmetically true, how long it runs on, how often it ends with the answer sentence it was trained to write, how
often no answer is found. Read from the `predictions.jsonl` that every evaluation writes, so it costs no model calls;
`bench/output_diagnostics.py` tabulates it over an experiment.

An "equation" is a written chain of numbers and operations with its result, `a op b [op c ...] = r` (op one of
+ - * / x ×; thousands separators and $ dropped). It is true when r equals the chain's value, with the usual
precedence, to within 0.01 (the rounding rationales show). Forms with parentheses or units between the numbers are
not counted; the same rule applies to every method compared.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from kpod.data.records import read_jsonl

NUMBER = r"-?\d+(?:\.\d+)?"
EQUATION = re.compile(rf"(?<![\d.)])({NUMBER}(?:\s*[-+*/x×]\s*{NUMBER})+)\s*=\s*({NUMBER})(?![\d(])")
TOKEN = re.compile(rf"({NUMBER})|([-+*/x×])")


def chain_value(chain: str) -> float | None:
    """Value of `a op b op c ...` with * and / before + and - (None on division by zero)."""
    numbers, ops = [], []
    for number, op in TOKEN.findall(chain):
        if number and len(numbers) == len(ops):
            numbers.append(float(number))
        else:  # an operator, or "-3" right after a number: "5 -3" is 5 - 3
            ops.append("-" if number else ("*" if op in ("x", "×") else op))
            if number:
                numbers.append(float(number.lstrip("-")))
    terms, signs = [numbers[0]], []
    for op, b in zip(ops, numbers[1:]):
        if op in "+-":
            terms.append(b)
            signs.append(op)
        elif op == "*":
            terms[-1] *= b
        elif b == 0:
            return None
        else:
            terms[-1] /= b
    return terms[0] + sum(t if sign == "+" else -t for sign, t in zip(signs, terms[1:]))


def check_equations(text: str) -> tuple[int, int]:
    """(true equations, equations) written in `text`."""
    true = total = 0
    for chain, result in EQUATION.findall(text.replace(",", "").replace("$", "")):
        value = chain_value(chain)
        total += 1
        true += value is not None and abs(value - float(result)) <= 0.01
    return true, total


def diagnose_predictions(rows: list[dict]) -> dict:
    """Summary of one evaluation's predictions (rows of predictions.jsonl)."""
    if not rows:
        raise ValueError("no predictions to diagnose")
    checks = [check_equations(r["output"]) for r in rows]
    true, total = sum(t for t, _ in checks), sum(n for _, n in checks)
    n = len(rows)
    return {
        "n": n,
        "correct": sum(bool(r["correct"]) for r in rows),
        "equations_per_answer": round(total / n, 2),
        "equations_true_pct": round(100.0 * true / total, 1) if total else None,
        # Answers whose every equation is true: the arithmetic did not break the chain (answers with none count too).
        "answers_all_equations_true_pct": round(100.0 * sum(t == m for t, m in checks) / n, 1),
        "mean_output_chars": round(statistics.mean(len(r["output"]) for r in rows), 1),
        "no_answer": sum(r.get("extracted") is None for r in rows),
        # None, like cut_off_pct, when some rows predate the field: a count of the rest would under-state it.
        "looks_truncated": _count(rows, lambda r: bool(r["looks_truncated"]), "looks_truncated"),
        # Answers read after an answer trigger ("Therefore, the answer is"), as the training targets end, and answers
        # cut off mid-sentence without one (a run-on that hit the generation limit). None for predictions written
        # before evaluation recorded how it read each answer.
        "answer_sentence_pct": _pct(rows, lambda r: r["source"] == "strict", "source"),
        "cut_off_pct": _pct(rows, lambda r: bool(r["looks_truncated"]), "looks_truncated"),
    }


def _count(rows: list[dict], test, field: str) -> int | None:
    """Rows passing `test`; None when some row lacks `field` (written before evaluation recorded it)."""
    if any(field not in r for r in rows):
        return None
    return sum(map(test, rows))


def _pct(rows: list[dict], test, field: str) -> float | None:
    count = _count(rows, test, field)
    return None if count is None else round(100.0 * count / len(rows), 1)


def diagnose_file(path: str | Path) -> dict:
    return diagnose_predictions([row for _, row in read_jsonl(path)])
