"""The records every pipeline stage hands to the next, and the JSONL helpers that read and write them.

A `Question` is one benchmark item; a `Rationale` is one teacher rationale for one question. Both are plain
dataclasses that serialise to one JSON object per line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator


class DataError(ValueError):
    """Bad input data. The message always names the file (and line, where there is one)."""


@dataclass
class Question:
    id: str
    question: str
    answer: str  # normalised gold answer ("51", "A", ...)
    dataset: str
    choices: list[str] | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Rationale:
    """One teacher rationale. `answer` is what the extractor read from the teacher's output."""

    id: str  # question id
    rationale: str
    teacher: str
    answer: str | None
    gold: str
    correct: bool
    sample: int = 0  # index among the rationales of the same question and teacher
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> "Rationale":
        return cls(**row)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line; a malformed line raises DataError with file:line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    lineno = 0
    try:
        with path.open(encoding="utf-8-sig") as f:  # a byte-order mark, as some editors write, is not JSON
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason}); save the file as UTF-8") from None


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically (temp file then rename) so a killed run never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
