"""Bounded retries with exponential backoff that honour a server's Retry-After, built on `tenacity`.

Why here and not the `openai` client's own `max_retries`: the client's retries are invisible to the caller (no count
for the summary), its first backoff is fixed at 0.5 s (module constant), and it does not retry a 200 whose body is
malformed. So the client runs with `max_retries=0` and every attempt goes through `call_with_retries`:

- an attempt raises `Retryable(kind, message, retry_after=...)` for what is worth retrying
  (429, 408, 409, 5xx, timeouts, connection errors, malformed bodies);
- the wait before the next attempt is the server's Retry-After (seconds, HTTP date, or `retry-after-ms`), capped
  at `max_retry_after_s`; without one, `backoff_initial_s * 2**k` (capped at `backoff_max_s`) plus a little jitter;
- after `max_retries` retries the last `Retryable` is raised to the caller, which records a failure.

    >>> call_with_retries(lambda: ask(), RetryConfig(max_retries=3), on_retry=count)
"""

from __future__ import annotations

import email.utils
import time
from typing import Callable, Mapping, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from kpod.teacher.config import RetryConfig

T = TypeVar("T")


class Retryable(Exception):
    """An attempt that failed in a way a later attempt may not: `kind` names it, `retry_after` is the server's wish."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After: 7` or `Retry-After: <HTTP date>`; None if absent/unreadable."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _WaitRetryAfterOrBackoff:
    """tenacity wait strategy: the server's Retry-After when it sent one, else exponential backoff with jitter."""

    def __init__(self, policy: RetryConfig):
        self.policy = policy
        # initial * 2**k (capped) plus up to a quarter of `initial` of jitter, so parallel workers do not retry in step
        self.backoff = wait_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s) + wait_random(
            0, policy.backoff_initial_s / 4
        )

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, Retryable) and error.retry_after is not None:
            return min(error.retry_after, self.policy.max_retry_after_s)
        return self.backoff(state)


def call_with_retries(
    attempt: Callable[[], T], policy: RetryConfig, on_retry: Callable[[Retryable, float], None] | None = None
) -> T:
    """`attempt()` until it returns, retrying `Retryable` up to `policy.max_retries` times; other errors pass through.

    `on_retry(error, wait_s)` is called before each wait (for counting and logging)."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.outcome.exception(), state.next_action.sleep if state.next_action else 0.0)

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=_WaitRetryAfterOrBackoff(policy),
        retry=retry_if_exception_type(Retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(attempt)
