"""The artefact of the weighting stage: one JSON row per rationale with its tokens and their weights.

Row schema (JSONL, one object per line):

    rationale_key  str               id given by the caller (for example "<question id>#<sample>")
    tokens         list[str]         each token's text, as decoded on its own (leading spaces kept)
    token_ids      list[int]         the student tokenizer's ids, same length as tokens
    weights        list[float]       w_j in (0, 1), same length as tokens
    step_spans     list[[int, int]]  [start, end) token ranges of the reasoning steps, in order

The step difficulty and the distillation loss read this file; `summary` and `viz` describe it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from kpod.data.records import DataError, read_jsonl, write_jsonl


@dataclass
class WeightedRationale:
    """One row of the artefact (see the module docstring)."""

    rationale_key: str
    tokens: list[str]
    token_ids: list[int]
    weights: list[float]
    step_spans: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if len(self.tokens) != n or len(self.weights) != n:
            raise ValueError(
                f"{self.rationale_key}: tokens ({len(self.tokens)}), token_ids ({n}) and weights "
                f"({len(self.weights)}) must have the same length"
            )
        previous_end = 0
        for span in self.step_spans:
            start, end = span
            if not (previous_end <= start <= end <= n):
                raise ValueError(f"{self.rationale_key}: step span {list(span)} is out of order or outside 0..{n}")
            previous_end = end

    def to_json(self) -> dict:
        row = asdict(self)
        row["weights"] = [round(float(w), 6) for w in self.weights]
        row["step_spans"] = [[int(s), int(e)] for s, e in self.step_spans]
        return row

    @classmethod
    def from_json(cls, row: Mapping) -> "WeightedRationale":
        return cls(
            rationale_key=str(row["rationale_key"]),
            tokens=list(row["tokens"]),
            token_ids=[int(i) for i in row["token_ids"]],
            weights=[float(w) for w in row["weights"]],
            step_spans=[[int(s), int(e)] for s, e in row.get("step_spans", [])],
        )


def as_weighted_rationale(row: WeightedRationale | Mapping) -> WeightedRationale:
    """Accept either a row object or its JSON dict."""
    return row if isinstance(row, WeightedRationale) else WeightedRationale.from_json(row)


def save_weights_jsonl(path: str | Path, rows: Iterable[WeightedRationale | Mapping]) -> int:
    """Write the artefact (atomically); rows are checked on the way. Returns the number of rows."""
    return write_jsonl(path, (as_weighted_rationale(r).to_json() for r in rows))


def load_weights_jsonl(path: str | Path) -> list[WeightedRationale]:
    """Read the artefact; a malformed row raises DataError naming file and line."""
    rows = []
    for lineno, obj in read_jsonl(path):
        try:
            rows.append(WeightedRationale.from_json(obj))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}:{lineno}: bad weighted rationale ({e})") from None
    return rows


def token_strings(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Each token's text decoded on its own ("Ġtotal" -> " total"): the preferred `tokens` of the artefact.

    A character that byte-level BPE splits over several tokens shows as U+FFFD in each of them.
    """
    return [tokenizer.decode([int(i)]) for i in token_ids]


# Word-boundary and control markers of raw vocabulary strings (byte-level BPE and SentencePiece).
_MARKERS = str.maketrans({"Ġ": " ", "Ċ": "\n", "ĉ": "\t", "▁": " "})


def readable_token(text: str) -> str:
    """Raw vocabulary strings ("Ġtotal", "▁total", "Ċ") as text (" total", a line break); decoded text unchanged.

    Lets summaries and pictures read artefacts written with `convert_ids_to_tokens` as well as with
    `token_strings`.
    """
    return text.translate(_MARKERS)
