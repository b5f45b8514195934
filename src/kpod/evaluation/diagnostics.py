"""What a student's answers look like beyond right or wrong: how many equations it writes and how many of them are
arithmetically true, how long it runs on, how often it ends with the answer sentence it was trained to write, how
often no answer is found. Read from the `predictions.jsonl` that every evaluation writes, so it costs no model calls;
`bench/output_diagnostics.py` tabulates it over an experiment.

An "equation" is a written chain of numbers and operations with its result, `a op b [op c ...] = r` (op one of
+ - * / x ×; thousands separators and $ dropped). It is true when r equals the chain's value, with the usual
precedence, to within 0.01 (the rounding rationales show). Forms with parentheses or units between the numbers are
not counted; the same rule applies to every method compared.

For multiple-choice answers (CommonsenseQA), `diagnose_choice_predictions` asks which choice the reasoning itself
settles on ("Of the above choices, only a mall is ...": the choices its last sentence names, plurals allowed; one
named choice counts, none or several do not) and whether the letter it then gives is that choice's.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from kpod.data.answers import choices_named, reasoning_sentences
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


def reasoned_choice(text: str, choices: list[str]) -> str | None:
    """The letter of the one choice the last sentence of the reasoning names; None when it names none or several."""
    sentences = reasoning_sentences(text)
    named = choices_named(sentences[-1], choices, plurals=True) if sentences else []
    return named[0] if len(named) == 1 else None


def diagnose_choice_predictions(rows: list[dict], choices: dict[str, list[str]], gold: dict[str, str]) -> dict:
    """Multiple-choice answers (rows of predictions.jsonl; `choices` and `gold` by question id): how often the
    reasoning settles on one choice, how often that choice is right, how often the letter given agrees with it, and
    the share of the most frequent letter (a student that always says "E" scores the share of E)."""
    if not rows:
        raise ValueError("no predictions to diagnose")
    reasoned = [reasoned_choice(r["output"], choices[r["id"]]) for r in rows]
    settled = [(c, r) for c, r in zip(reasoned, rows) if c is not None]
    lettered = [(c, r) for c, r in settled if r.get("extracted")]
    letters = [r["extracted"] for r in rows if r.get("extracted")]
    n = len(rows)
    return {
        "n": n,
        "correct": sum(bool(r["correct"]) for r in rows),
        "reasoning_settles_pct": round(100.0 * len(settled) / n, 1),
        # the reasoning's own choice is the gold one, over all answers: its accuracy if its letter always followed it
        "reasoning_right_pct": round(100.0 * sum(c == gold[r["id"]] for c, r in settled) / n, 1),
        "letter_follows_reasoning_pct": (round(100.0 * sum(c == r["extracted"] for c, r in lettered) / len(lettered), 1)
                                         if lettered else None),
        "most_common_letter_pct": round(100.0 * max(letters.count(x) for x in set(letters)) / n, 1) if letters else 0.0,
    }
