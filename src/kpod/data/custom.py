"""A user's own data: one JSONL file per split.

Each line: {"question": str, "answer": str|number, "id"?: str, "choices"?: [str, ...],
            "rationale"?: str, "rationales"?: [str, ...]}
Answers are read as numbers (`answer_type="number"`) or choice letters (`"choice"`, needs `choices`).

    >>> questions, rationales = load_user_jsonl("my_train.jsonl", answer_type="number")
"""

from __future__ import annotations

from pathlib import Path

from kpod.data.answers import answers_match, extract_answer, normalize_gold
from kpod.data.records import DataError, Question, Rationale, read_jsonl

USER_TEACHER = "user"


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
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        for field in ("question", "answer"):
            if field not in row:
                raise DataError(f"{where}: missing field {field!r}")
        text = str(row["question"]).strip()
        if not text:
            raise DataError(f"{where}: empty question")
        choices = row.get("choices")
        if answer_type == "choice" and not (isinstance(choices, list) and len(choices) >= 2):
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
            pred = extract_answer(r, answer_type, choices)
            rationales.append(
                Rationale(
                    id=qid, rationale=r.strip(), teacher=USER_TEACHER, answer=pred, gold=gold,
                    correct=answers_match(pred, gold, answer_type, choices), sample=k,
                )
            )
    if not questions:
        raise DataError(f"{path}: no questions in file")
    return questions, rationales
