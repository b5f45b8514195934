"""Run a teacher over a question set: zero-shot CoT requests through the cache and a backend, rationales to disk.

Samples (question x sample index) are grouped into batches of `backend.batch_size` (1 for HTTP backends) and handed
to a thread pool of `concurrency` workers (1 for local backends). At most two batches per worker are in flight, and
finished batches are written in input order as soon as they are at the head of the queue: memory stays flat however
long the run, and the output order does not depend on timing.

Every request goes through the cache first; a miss is claimed (an identical request already in flight elsewhere is
waited for, not sent twice), sent, and its reply committed to the cache the moment it arrives. Only then is it used.

    >>> summary = TeachRun(cfg).run(load_teach_questions(cfg))
    >>> summary["kept"], summary["tokens"]["this_run"]
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from kpod.data.custom import load_user_jsonl
from kpod.data.datasets import load_split
from kpod.data.records import Question, Rationale
from kpod.teacher.backends import (
    FatalTeacherError,
    RequestFailed,
    TeacherBackend,
    TeacherReply,
    TeacherRequest,
    make_backend,
)
from kpod.teacher.cache import ReplyCache
from kpod.teacher.config import TeachConfig, dump_teach_config
from kpod.teacher.outputs import StreamingWriter, Tally, TeachPaths
from kpod.teacher.zero_shot_cot import EMPTY, KEPT, TRUNCATED, ZeroShotCoT

log = logging.getLogger(__name__)

FAILED = "failed"
_FLUSH_EVERY_S = 1.0


def load_teach_questions(cfg: TeachConfig) -> list[Question]:
    """The questions of the configured split (or custom file), the first `limit` of them."""
    if cfg.dataset == "custom":
        questions = load_user_jsonl(cfg.file, cfg.answer_type)[0]
    else:
        questions = load_split(cfg.dataset, cfg.split, cfg.data_dir)
    return questions[: cfg.limit] if cfg.limit else questions


@dataclass
class SampleOutcome:
    """What happened to one (question, sample): its replies (in turn order) and the rationale, or the failure."""

    question: Question
    sample: int
    replies: list[TeacherReply | RequestFailed]
    rationale: Rationale | None
    verdict: str


class _InFlight:
    """Keys being asked right now; a second asker of the same key waits for the first one's reply."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def claim(self, key: str) -> threading.Event | None:
        """None: the caller owns the key and must `release` it. An Event: someone else is asking; wait on it."""
        with self._lock:
            if key in self._events:
                return self._events[key]
            self._events[key] = threading.Event()
            return None

    def release(self, key: str) -> None:
        with self._lock:
            event = self._events.pop(key)
        event.set()


class TeachRun:
    def __init__(self, cfg: TeachConfig, backend: TeacherBackend | None = None, progress: bool = True):
        self.cfg = cfg
        self.paths = TeachPaths(Path(cfg.out))
        self.progress = progress
        self.cot = ZeroShotCoT(cfg)
        self._backend = backend
        self._inflight = _InFlight()
        self._stop = threading.Event()
        self.skipped: list[str] = []  # questions with nothing to rationalize (no perturbed answer)
        self._failures_in_a_row = 0
        if cfg.n > 1 and cfg.temperature == 0:
            log.warning("n=%d samples at temperature 0: greedy samples are alike; set temperature > 0", cfg.n)

    # ------------------------------------------------------------------ the run
    def run(self, questions: Iterable[Question], total: int | None = None) -> dict:
        """Teach every question (n samples each); returns the summary (also written to OUT/summary.json)."""
        cfg = self.cfg
        if total is None and hasattr(questions, "__len__"):
            total = len(questions)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        for old in [*self.paths.streamed(), self.paths.summary]:  # a previous run's: none may outlive this config
            old.unlink(missing_ok=True)
        dump_teach_config(cfg, self.paths.config)
        backend = self._backend or make_backend(cfg)
        self.backend, self.cache = backend, ReplyCache(cfg.cache_path())
        workers = min(cfg.concurrency, backend.max_concurrency or cfg.concurrency)
        tally, writer = Tally(), StreamingWriter(self.paths)
        bar = tqdm(total=total * cfg.n if total else None, unit="sample", desc=f"teach {cfg.model}",
                   disable=not self.progress, mininterval=1)
        started, status = time.monotonic(), "stopped"
        pool = ThreadPoolExecutor(workers, thread_name_prefix="teach")
        try:
            pending: deque[Future] = deque()
            last_flush = time.monotonic()
            for batch in _batches(self._samples(questions), backend.batch_size):
                pending.append(pool.submit(self._teach_batch, batch))
                while pending and (len(pending) >= 2 * workers or pending[0].done()):
                    self._record(pending.popleft().result(), tally, writer, bar)
                if time.monotonic() - last_flush > _FLUSH_EVERY_S:
                    writer.flush()
                    last_flush = time.monotonic()
            while pending:
                self._record(pending.popleft().result(), tally, writer, bar)
            writer.finish()
            status = "complete"
        except BaseException as error:  # a fatal backend error or Ctrl-C: stop the workers, keep what is cached
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            writer.close()
            status = f"stopped: {type(error).__name__}"
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
            summary = self._summary(tally, backend, time.monotonic() - started, status)
            self.paths.summary.write_text(json.dumps(summary, indent=1))
            self.cache.close()
            if self._backend is None:
                backend.close()
        return summary

    def _samples(self, questions: Iterable[Question]) -> Iterator[tuple[Question, int]]:
        for question in questions:
            if self.cot.explained(question) is None:  # rationalization without a perturbed answer to draw
                self.skipped.append(question.id)
                continue
            for sample in range(self.cfg.n):
                yield question, sample

    def _record(self, outcomes: list[SampleOutcome], tally: Tally, writer: StreamingWriter, bar) -> None:
        for outcome in outcomes:
            tally.add_replies(outcome.replies)
            tally.add_sample(outcome.question.id, outcome.verdict, outcome.rationale)
            self._failures_in_a_row = self._failures_in_a_row + 1 if outcome.verdict == FAILED else 0
            if outcome.verdict == FAILED:
                failure = next(r for r in outcome.replies if isinstance(r, RequestFailed))
                limit = self.cfg.stop_after_failures
                if limit and self._failures_in_a_row >= limit:
                    raise FatalTeacherError(
                        f"the last {limit} samples all failed after their retries (last: {failure.kind}, "
                        f"{failure.message}); stopping (stop_after_failures). Replies so far are cached: fix the "
                        "cause and run again")
                turn = "answer" if len(outcome.replies) == 2 else "rationale"
                writer.write(self.paths.failures, {"id": outcome.question.id, "sample": outcome.sample, "turn": turn,
                                                   "kind": failure.kind, "status": failure.status,
                                                   "attempts": failure.attempts, "message": failure.message})
            elif outcome.verdict == KEPT or (self.cfg.keep_wrong and outcome.verdict not in (EMPTY, TRUNCATED)):
                writer.write(self.paths.rationales, outcome.rationale.to_json())
                tally.written += 1
            else:
                row = outcome.rationale.to_json()
                row["meta"]["dropped"] = outcome.verdict
                writer.write(self.paths.rejected, row)
        bar.update(len(outcomes))
        bar.set_postfix(kept=tally.verdicts[KEPT], cached=tally.cached, failed=tally.failed_requests, refresh=False)

    # ------------------------------------------------------------------ one batch (in a worker thread)
    def _teach_batch(self, batch: list[tuple[Question, int]]) -> list[SampleOutcome]:
        firsts = [self.cot.first_request(question, sample) for question, sample in batch]
        first_replies = self._ask(firsts)
        second_replies: list[TeacherReply | RequestFailed | None] = [None] * len(batch)
        if self.cot.two_turns:
            todo = [i for i, reply in enumerate(first_replies) if isinstance(reply, TeacherReply)]
            answers = self._ask([self.cot.answer_request(batch[i][0], firsts[i], first_replies[i].text) for i in todo])
            for i, reply in zip(todo, answers):
                second_replies[i] = reply
        outcomes = []
        for (question, sample), first, second in zip(batch, first_replies, second_replies):
            replies = [first] + ([second] if second is not None else [])
            if any(isinstance(r, RequestFailed) for r in replies):
                outcomes.append(SampleOutcome(question, sample, replies, None, FAILED))
                continue
            rationale, verdict = self.cot.to_rationale(question, sample, first, second)
            outcomes.append(SampleOutcome(question, sample, replies, rationale, verdict))
        return outcomes

    def _ask(self, requests: list[TeacherRequest]) -> list[TeacherReply | RequestFailed]:
        """Replies in order: from the cache, from an identical request in flight, or from the backend (then cached)."""
        backend, cache = self.backend, self.cache
        if not backend.decodes_contrastively and any(r.contrast_prompt is not None for r in requests):
            raise FatalTeacherError(f"backend {backend.name!r} cannot decode contrastively: use backend 'hf' "
                                    "(or rationalize.contrast 'none')")
        keys = [cache.key(backend.name, backend.model, r) for r in requests]
        replies: list[TeacherReply | RequestFailed | None] = [None] * len(requests)
        owned, waiting = [], []
        for i, key in enumerate(keys):
            if (hit := cache.get(key)) is not None:
                replies[i] = hit
            elif (event := self._inflight.claim(key)) is not None:
                waiting.append((i, event))
            elif (hit := cache.get(key)) is not None:  # stored between the first look and the claim
                self._inflight.release(key)
                replies[i] = hit
            else:
                owned.append(i)
        try:
            if owned and self._stop.is_set():
                fresh = [RequestFailed("cancelled", "the run was stopped")] * len(owned)
            elif owned:
                fresh = backend.complete([requests[i] for i in owned])
            else:
                fresh = []
            for i, reply in zip(owned, fresh):
                if isinstance(reply, TeacherReply):
                    cache.put(keys[i], backend.name, backend.model, requests[i], reply)
                replies[i] = reply
        finally:
            for i in owned:
                self._inflight.release(keys[i])
        for i, event in waiting:
            event.wait()
            replies[i] = cache.get(keys[i]) or RequestFailed("duplicate_failed", "an identical request failed")
        return replies

    # ------------------------------------------------------------------ summary
    def _summary(self, tally: Tally, backend: TeacherBackend, wall: float, status: str) -> dict:
        cfg = self.cfg
        total_tokens = tally.tokens_new + tally.tokens_cached
        dropped = {k: v for k, v in tally.verdicts.items() if k != KEPT}
        counters = backend.counters
        return {
            "status": status,
            "teacher": cfg.model,
            "backend": cfg.backend,
            "mode": cfg.mode,
            "dataset": cfg.answer_kind if cfg.dataset == "custom" else cfg.dataset,
            "split": cfg.split if cfg.dataset != "custom" else None,
            "n": cfg.n,
            "temperature": cfg.temperature,
            "samples": tally.samples,
            "rationalize": cfg.rationalize.model_dump() if cfg.rationalize.enabled else None,
            "skipped_questions": len(self.skipped),
            "questions_with_kept_rationale": tally.questions_with_kept,
            "kept": tally.verdicts[KEPT],
            "correct": tally.correct,
            "correct_rate": round(tally.correct / tally.answered, 4) if tally.answered else None,
            "written": tally.written,
            "dropped": {name: dropped.get(name, 0)
                        for name in ("wrong_answer", "no_answer", "empty_rationale", TRUNCATED, FAILED)},
            "requests": {
                "total": tally.requests,
                "asked": tally.asked,
                "cached": tally.cached,
                "failed": tally.failed_requests,
                "failure_kinds": dict(tally.failure_kinds),
                "http_attempts": counters.attempts,
                "retries": counters.retries,
                "retry_reasons": dict(counters.retry_reasons),
            },
            "tokens": {
                "this_run": _tokens(tally.tokens_new),
                "from_cache": _tokens(tally.tokens_cached),
                "total": _tokens(total_tokens),
            },
            "cost": _cost(cfg, tally.tokens_new, total_tokens),
            "wall_s": round(wall, 2),
            "samples_per_s": round(tally.samples / wall, 2) if wall else None,
            "completion_tokens_per_s": round(tally.tokens_new["completion"] / wall, 1) if wall else None,
            "outputs": {"rationales": self.paths.rationales.name, "rejected": self.paths.rejected.name,
                        "failures": self.paths.failures.name, "cache": str(cfg.cache_path())},
        }


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _tokens(counter) -> dict:
    return {"prompt": counter["prompt"], "completion": counter["completion"],
            "total": counter["prompt"] + counter["completion"]}


def _cost(cfg: TeachConfig, new, total) -> dict | None:
    prices = cfg.prices
    if prices.prompt_per_1k is None and prices.completion_per_1k is None:
        return None

    def price(tokens) -> float:
        return round(tokens["prompt"] / 1000 * (prices.prompt_per_1k or 0)
                     + tokens["completion"] / 1000 * (prices.completion_per_1k or 0), 6)

    return {"this_run": price(new), "total": price(total), "prompt_per_1k": prices.prompt_per_1k,
            "completion_per_1k": prices.completion_per_1k}


def run_teach(cfg: TeachConfig, progress: bool = True) -> dict:
    """Load the configured questions and teach them; the summary dict. Raises FatalTeacherError (bad key, ...)."""
    return TeachRun(cfg, progress=progress).run(load_teach_questions(cfg))
