"""Where a teach run writes, and the streaming writer and tallies behind its summary.

    OUT/config.yaml         the resolved config (never the API key)
    OUT/rationales.jsonl    kept rationales in kpod's `Rationale` format: use as `data.rationale_source` in a run config
    OUT/rejected.jsonl      answered but dropped (wrong answer, no answer, empty reasoning); `meta.dropped` says why
    OUT/failures.jsonl      samples without a reply after the retries: question id, sample, turn, error kind, message
    OUT/summary.json        counts, token usage, cost, throughput
    OUT/cache.sqlite        the reply cache (unless `cache` points elsewhere)

Rows are appended as they are produced to `NAME.partial` files, renamed to their names when the run completes, so a
killed run never leaves a file that looks finished. A re-run rewrites them from the cache.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kpod.data.records import Rationale
from kpod.teacher.backends import RequestFailed, TeacherReply


@dataclass(frozen=True)
class TeachPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def rationales(self) -> Path:
        return self.root / "rationales.jsonl"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected.jsonl"

    @property
    def failures(self) -> Path:
        return self.root / "failures.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def streamed(self) -> list[Path]:
        return [self.rationales, self.rejected, self.failures]


class StreamingWriter:
    """Appends JSON lines to the `.partial` files; `finish()` renames them. Holds no rows in memory."""

    def __init__(self, paths: TeachPaths):
        paths.root.mkdir(parents=True, exist_ok=True)
        self._targets = paths.streamed()
        self._files = {p: _partial(p).open("w", encoding="utf-8") for p in self._targets}
        self._paths = paths

    def write(self, path: Path, row: dict) -> None:
        self._files[path].write(json.dumps(row, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def finish(self) -> None:
        self.close()
        for path in self._targets:
            _partial(path).replace(path)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


@dataclass
class Tally:
    """Constant-size counters of a run (no per-question lists, so memory stays flat over long runs)."""

    samples: int = 0
    verdicts: Counter = field(default_factory=Counter)  # kept / wrong_answer / no_answer / empty_rationale / failed
    correct: int = 0
    written: int = 0
    requests: int = 0
    cached: int = 0
    asked: int = 0
    failed_requests: int = 0
    failure_kinds: Counter = field(default_factory=Counter)
    tokens_new: Counter = field(default_factory=Counter)  # prompt / completion, replies fetched in this run
    tokens_cached: Counter = field(default_factory=Counter)  # replies answered from the cache
    questions_with_kept: int = 0
    _question: str | None = None
    _question_kept: bool = False

    def add_replies(self, replies: list[TeacherReply | RequestFailed]) -> None:
        for reply in replies:
            self.requests += 1
            if isinstance(reply, RequestFailed):
                self.failed_requests += 1
                self.failure_kinds[reply.kind] += 1
                continue
            tokens = self.tokens_cached if reply.cached else self.tokens_new
            tokens["prompt"] += reply.prompt_tokens
            tokens["completion"] += reply.completion_tokens
            if reply.cached:
                self.cached += 1
            else:
                self.asked += 1
        self.asked += sum(isinstance(r, RequestFailed) for r in replies)

    def add_sample(self, question_id: str, verdict: str, rationale: Rationale | None) -> None:
        """Samples arrive in input order, a question's samples together: count questions without a set of ids."""
        if question_id != self._question:
            self._question, self._question_kept = question_id, False
        self.samples += 1
        self.verdicts[verdict] += 1
        if rationale is not None and rationale.correct:
            self.correct += 1
        if verdict == "kept" and not self._question_kept:
            self._question_kept = True
            self.questions_with_kept += 1

    @property
    def answered(self) -> int:
        return self.samples - self.verdicts["failed"]
