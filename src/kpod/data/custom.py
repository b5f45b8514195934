"""A user's own data: one JSONL file per split.

Each line: {"question": str, "answer": str|number, "id"?: str, "choices"?: [str, ...],
            "rationale"?: str, "rationales"?: [str, ...]}
Answers are read as numbers (`answer_type="number"`) or choice letters (`"choice"`, needs `choices`: 2 to 5 strings,
shown to the student after the question as "Answer Choices: (A) ... (B) ..."; the answer is a letter or a choice's
text). The id defaults to FILE-STEM-LINE. Unknown fields are ignored with a warning.

    >>> questions, rationales = load_user_jsonl("my_train.jsonl", answer_type="number")
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from kpod.data.answers import CHOICE_LETTERS, answers_match, extract_answer, normalize_gold
from kpod.data.rationales import normalise_text
from kpod.data.records import DataError, Question, Rationale, read_jsonl

log = logging.getLogger("kpod")

USER_TEACHER = "user"
FIELDS = {"id", "question", "answer", "choices", "rationale", "rationales"}
MAX_CHOICES = len(CHOICE_LETTERS)  # answers are read as these letters


def load_user_jsonl(
    path: str | Path, answer_type: str = "number", name: str | None = None
) -> tuple[list[Question], list[Rationale]]:
    """Questions and (if present) rationales of a user JSONL file. Bad lines raise DataError naming file:line."""
    if answer_type not in ("number", "choice"):
        raise DataError(f"answer_type must be 'number' or 'choice', got {answer_type!r}")
    path = Path(path)
    name = name or path.stem
    questions: list[Question] = []
    rationales: list[Rationale] = []
    seen: set[str] = set()
    unknown, texts_seen = Counter(), Counter()
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        for field in ("question", "answer"):
            if field not in row:
                raise DataError(f"{where}: missing field {field!r}")
        unknown.update(set(row) - FIELDS)
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise DataError(f"{where}: 'question' must be a non-empty string, got {row['question']!r}")
        text = row["question"].strip()
        texts_seen[normalise_text(text)] += 1
        if isinstance(row["answer"], bool) or not isinstance(row["answer"], (str, int, float)):
            raise DataError(f"{where}: 'answer' must be a number or a string, got {row['answer']!r}")
        choices = row.get("choices")
        if choices is not None and not (isinstance(choices, list) and 2 <= len(choices) <= MAX_CHOICES
                                        and all(isinstance(c, str) and c.strip() for c in choices)):
            raise DataError(f"{where}: 'choices' must be a list of 2 to {MAX_CHOICES} non-empty strings (answers are "
                            f"read as the letters A-{CHOICE_LETTERS[-1]}), got {choices!r}")
        if answer_type == "choice" and choices is None:
            raise DataError(f"{where}: answer_type 'choice' needs a list 'choices' of at least two options")
        gold = normalize_gold(row["answer"], answer_type, choices) if choices else normalize_gold(row["answer"], answer_type)
        if gold is None:
            raise DataError(f"{where}: cannot read answer {row['answer']!r} as a {answer_type}")
        qid = str(row.get("id", f"{name}-{lineno}"))
        if qid in seen:
            raise DataError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        questions.append(Question(id=qid, question=text, answer=gold, dataset=answer_type, choices=choices))

        texts = row.get("rationales", [])
        if "rationale" in row:
            texts = [row["rationale"], *texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: 'rationale' must be a string and 'rationales' a list of strings")
        for k, r in enumerate(texts):
            if not r.strip():
                raise DataError(f"{where}: empty rationale")
            pred = extract_answer(r, answer_type, choices)
            rationales.append(
                Rationale(
                    id=qid, rationale=r.strip(), teacher=USER_TEACHER, answer=pred, gold=gold,
                    correct=answers_match(pred, gold, answer_type, choices), sample=k,
                )
            )
    if not questions:
        raise DataError(f"{path}: no questions in file")
    if unknown:  # most likely a misspelled field ("Rationale", "explanation"): it would be ignored
        log.warning("%s: fields that kpod does not read, ignored: %s (it reads %s)", path,
                    ", ".join(f"{k!r} ({n} lines)" for k, n in sorted(unknown.items())), ", ".join(sorted(FIELDS)))
    repeated = sum(n - 1 for n in texts_seen.values() if n > 1)
    if repeated:
        log.warning("%s: %d questions repeat the text of an earlier one", path, repeated)
    return questions, rationales
