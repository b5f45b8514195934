"""Import the released teacher rationale sets into kpod's one rationale format (`Rationale`).

Sources (files under the data folder, see its README):
- `gpt35`   GPT-3.5-Turbo, mentor-kd release: SVAMP and ASDiv, 3 per question, matched by question text.
- `palm`    PaLM-540B, distilling-step-by-step release: CSQA (aligned by position with cqa_train.json) and SVAMP
            (matched by question text). The text runs on into made-up few-shot items: cut at the first "\\n\\nQ:".
- `llama3`  LLaMA-3-70B, EIT release: GSM8K, levels 1 and 2. Its stated answer may have been filled in from gold,
            so a rationale only counts as correct if its reasoning's last number also equals gold.

Only questions of the TRAIN split are kept: several release files were made on other splits and cover dev/test
questions (counted as `not_train` in the report; never silently dropped). Wrong rationales are kept in the
output with `correct=False` and filtered by the caller (`only_correct`), again with counts. A release that states
each rationale's answer apart from its text (`gpt35`) is judged by that answer, which is the gold one in every row;
`meta.text_agrees` records whether kpod reads the same answer from the text (`data.require_text_agrees` drops those
where it does not).

    >>> rationales, report = import_rationales("svamp", "gpt35")
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from kpod.data.answers import answers_match, extract_answer, normalize_gold
from kpod.data.datasets import default_data_dir, load_split
from kpod.data.records import DataError, Question, Rationale, read_jsonl

RUN_ON = re.compile(r"\n\s*\nQ:|\nQ:")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalise_text(s: str) -> str:
    """Whitespace- and case-insensitive key for matching question texts across releases."""
    return " ".join(s.split()).lower()


@dataclass
class RawRationale:
    """What a release file gives before matching: the question (by id or by text) and the teacher's text."""

    text: str
    question_id: str | None = None
    question_text: str | None = None
    meta: dict | None = None
    # The teacher's answer from its separate answer-extraction turn, where the release keeps it.
    stated_answer: str | None = None


def _json(path: Path):
    if not path.exists():
        raise DataError(f"{path}: file not found (released rationales are read from the data folder; see --data-dir)")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _gpt35(dataset: str, data_dir: Path) -> Iterator[RawRationale]:
    for row in _json(data_dir / f"rationales/gpt35-mentor-kd/{dataset}_3_train.json"):
        yield RawRationale(row["chain"], question_text=row["input"], stated_answer=str(row["answer"]))


def _palm(dataset: str, data_dir: Path) -> Iterator[RawRationale]:
    base = data_dir / "rationales/palm-dss"
    if dataset == "csqa":
        items = [row for _, row in read_jsonl(base / "cqa/cqa_train.json")]
        texts = [t for k in range(10) for t in _json(base / f"cqa/llm/train_CoT_{k}.json")]
        if len(texts) != len(items):
            raise DataError(f"{base}/cqa: {len(texts)} rationales for {len(items)} questions; files do not align")
        for item, text in zip(items, texts):
            yield RawRationale(RUN_ON.split(text)[0], question_id=item["id"])
    else:  # svamp: both DSS files; anything not in KPOD train is counted and dropped by the caller
        for part, llm_files in (("train", ["train_CoT_0", "train_CoT_1"]), ("test", ["test_CoT_0"])):
            items = [row for _, row in read_jsonl(base / f"svamp/svamp_{part}.json")]
            texts = [t for name in llm_files for t in _json(base / f"svamp/llm/{name}.json")]
            for item, text in zip(items, texts):
                yield RawRationale(RUN_ON.split(text)[0], question_text=item["input"], meta={"dss_file": part})


def _llama3(dataset: str, data_dir: Path) -> Iterator[RawRationale]:
    for level in (1, 2):
        for row in _json(data_dir / f"rationales/llama3-70b-eit/gsm8k_llama_level{level}_ranked.json"):
            yield RawRationale(row["output"], question_text=row["instruction"], meta={"level": level})


def _last_number_before_trigger(text: str) -> str | None:
    body = re.split(r"[Tt]he answer is", text)[0]
    nums = NUMBER.findall(body)
    return nums[-1].replace(",", "") if nums else None


@dataclass(frozen=True)
class RationaleSource:
    teacher: str
    datasets: tuple[str, ...]
    read: Callable[[str, Path], Iterator[RawRationale]]
    license: str
    # Extra check beyond "extracted answer == gold" (the LLaMA-3 release may have gold pasted into its answer).
    consistent: Callable[[str, str, str], bool] | None = None


SOURCES: dict[str, RationaleSource] = {
    "gpt35": RationaleSource("gpt-3.5-turbo", ("svamp", "asdiv"), _gpt35, "Apache-2.0 (2hojae/mentor-kd)"),
    "palm": RationaleSource("palm-540b", ("csqa", "svamp"), _palm, "Apache-2.0 (google-research/distilling-step-by-step)"),
    "llama3": RationaleSource(
        "llama-3-70b",
        ("gsm8k",),
        _llama3,
        "Apache-2.0 (EIT-NLP/Distilling-CoT-Reasoning)",
        consistent=lambda text, gold, ds: answers_match(_last_number_before_trigger(text), gold, ds),
    ),
}

DEFAULT_SOURCE = {"svamp": "gpt35", "asdiv": "gpt35", "gsm8k": "llama3", "csqa": "palm"}


def import_rationales(
    dataset: str, source: str | None = None, data_dir: str | Path | None = None
) -> tuple[list[Rationale], dict]:
    """All rationales of `source` for the train questions of `dataset`, with correctness, and a count report."""
    source = source or DEFAULT_SOURCE.get(dataset)
    if source not in SOURCES:
        raise DataError(f"unknown rationale source {source!r}; known: {', '.join(SOURCES)}")
    spec = SOURCES[source]
    if dataset not in spec.datasets:
        raise DataError(f"source {source!r} has rationales for {', '.join(spec.datasets)}, not {dataset!r}")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    train = load_split(dataset, "train", data_dir)
    by_id = {q.id: q for q in train}
    by_text: dict[str, list[Question]] = defaultdict(list)
    for q in train:
        by_text[normalise_text(q.question)].append(q)
    heldout = {
        normalise_text(q.question) for split in ("dev", "test") for q in load_split(dataset, split, data_dir)
    }

    counts: Counter = Counter()
    samples: Counter = Counter()
    out: list[Rationale] = []
    for raw in spec.read(dataset, data_dir):
        counts["read"] += 1
        if raw.question_id is not None:
            matched = [by_id[raw.question_id]] if raw.question_id in by_id else []
        else:
            matched = by_text.get(normalise_text(raw.question_text or ""), [])
        if not matched:
            # Not a train question: a dev/test question (leakage guard) or an unknown text.
            key = "not_train_heldout" if normalise_text(raw.question_text or "") in heldout or raw.question_id else "unmatched"
            counts[key] += 1
            continue
        text = raw.text.strip()
        for q in matched:  # a text shared by two problems (one ASDiv case) is tried against each
            in_text = extract_answer(text, dataset, q.choices) if q.choices else extract_answer(text, dataset)
            meta = dict(raw.meta or {})
            if raw.stated_answer is not None:  # the answer turn is the teacher's answer; the text is its reasoning
                pred = normalize_gold(raw.stated_answer, dataset)
                meta["answer_in_text"] = in_text
                meta["text_agrees"] = answers_match(in_text, pred, dataset)
            else:
                pred = in_text
            correct = answers_match(pred, q.answer, dataset, q.choices)
            if correct and spec.consistent and not spec.consistent(text, q.answer, dataset):
                correct = False
                meta["inconsistent_reasoning"] = True
                counts["inconsistent_reasoning"] += 1
            out.append(
                Rationale(id=q.id, rationale=text, teacher=spec.teacher, answer=pred, gold=q.answer,
                          correct=correct, sample=samples[q.id], meta=meta)
            )
            samples[q.id] += 1
    n_correct = sum(r.correct for r in out)
    covered = {r.id for r in out if r.correct}
    report = {
        "dataset": dataset,
        "source": source,
        "teacher": spec.teacher,
        "license": spec.license,
        "read": counts["read"],
        "dropped_not_in_train_split": counts["not_train_heldout"],
        "dropped_unmatched_question": counts["unmatched"],
        "rationales": len(out),
        "correct": n_correct,
        "dropped_wrong_answer": len(out) - n_correct,
        "of_which_inconsistent_reasoning": counts["inconsistent_reasoning"],
        "train_questions": len(train),
        "train_questions_with_correct_rationale": len(covered),
    }
    return out, report


# A sentence that opens with an answer statement: "The answer is 48" (LLaMA-3, GSM8K), "So the answer is (d) math
# problem." (PaLM, CSQA), "Therefore, the answer is 42." (zero-shot CoT), "The final answer is 8", "Answer: 8",
# "#### 8", "\\boxed{8}". Only at a sentence's start: "check whether the answer is bigger" is reasoning.
_STATEMENT_OPENER = re.compile(
    r"(?:[-*]\s+)?(?:\*\*)?(?:(?:so|therefore|thus|hence|finally)\s*,?\s*)?(?:(?:the|our|my)\s+)?(?:(?:final|correct)\s+)?"
    r"answer\s*(?:is\b|was\b|would\s+be\b|:)|####|\$*\\boxed\{",
    re.IGNORECASE,
)
_SENTENCE_START = re.compile(r"(?:^|\n|[.!?][ \t]*)[ \t\n]*")  # "... 30 cups.The answer is 30" too


def _is_statement(text: str, start: int, end: int, one_sentence: bool) -> bool:
    """Whether text[start:end] is an answer statement: an opener, then the rest of its line (`one_sentence`: of its
    sentence)."""
    opener = _STATEMENT_OPENER.match(text, start)
    rest = text[opener.end():end].strip() if opener else None
    return rest is not None and "\n" not in rest and not (one_sentence and re.search(r"[.!?]\s*\S", rest))


def split_answer_statement(text: str, keep_statement_alone: bool = True) -> tuple[str, str]:
    """(reasoning, closing answer statement): the statement runs from the last sentence that opens with an answer
    trigger to the end, when that is the text's last line, with any one-sentence statements right before it
    ("#### 51\nThe answer is 51."). A student target adds its own answer sentence after the rationale
    (`data.target_template`), so a rationale that keeps the teacher's would teach two. (text, "") when there is no
    such statement, or when nothing would be left (("", text) with `keep_statement_alone` off)."""
    starts = [m.end() for m in _SENTENCE_START.finditer(text)]
    openers = [s for s in starts if _STATEMENT_OPENER.match(text, s)]
    if not openers or not _is_statement(text, openers[-1], len(text), one_sentence=False):
        return text, ""
    cut = openers[-1]
    for start in reversed(openers[:-1]):
        if not _is_statement(text, start, cut, one_sentence=True):
            break
        cut = start
    reasoning = text[:cut].rstrip()
    return (reasoning, text[cut:].strip()) if reasoning or not keep_statement_alone else (text, "")


def without_answer_statements(rationales: list[Rationale]) -> tuple[list[Rationale], int]:
    """The rationales with their closing answer statement cut (kept in meta["answer_statement"]), and how many had one."""
    out, cut = [], 0
    for r in rationales:
        reasoning, statement = split_answer_statement(r.rationale)
        if statement:
            r = replace(r, rationale=reasoning, meta={**r.meta, "answer_statement": statement})
            cut += 1
        out.append(r)
    return out, cut


def only_correct(rationales: list[Rationale]) -> list[Rationale]:
    return [r for r in rationales if r.correct]


def assert_no_leakage(rationales: list[Rationale], dataset: str, data_dir: str | Path | None = None) -> None:
    """Raise if any rationale belongs to a dev/test question (by id)."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    held = {q.id for split in ("dev", "test") for q in load_split(dataset, split, data_dir)}
    bad = [r.id for r in rationales if r.id in held]
    if bad:
        raise DataError(f"{len(bad)} rationales belong to {dataset} dev/test questions, e.g. {bad[:3]}")
