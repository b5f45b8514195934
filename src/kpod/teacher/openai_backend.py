"""The `openai` teacher backend: the official `openai` client against any OpenAI-compatible API.

Chat mode calls `/chat/completions`, completion mode `/completions` (the paper's two turns need a plain completion
endpoint: OpenAI's legacy models, vLLM's or llama.cpp's servers). The base URL and the key come from the config or
from the environment variables it names (default OPENAI_BASE_URL / OPENAI_API_KEY). A local server without auth
needs no key: with a base URL and no key a placeholder is sent. The key is never logged: error messages that
reach the outputs pass through `redact`.

Retries are ours (kpod.teacher.retry, the client runs with max_retries=0); authentication, permission and
unknown-model errors stop the whole run (`FatalTeacherError`); other 4xx fail just that request.

    >>> backend = OpenAIBackend(load_teach_config(None, {"model": "gpt-4o-mini", "concurrency": 16}))
"""

from __future__ import annotations

import json
import logging
import threading

from kpod.teacher.backends import (
    FatalTeacherError,
    RequestFailed,
    TeacherBackend,
    TeacherReply,
    TeacherRequest,
)
from kpod.teacher.config import TeachConfig
from kpod.teacher.retry import Retryable, call_with_retries, parse_retry_after

log = logging.getLogger(__name__)

NO_KEY_PLACEHOLDER = "no-key"  # what is sent to a local server that needs no key
_RETRYABLE_STATUS = {408, 409, 425, 429}  # plus every 5xx
_FATAL_STATUS = {401, 403, 404}


class OpenAIBackend(TeacherBackend):
    name = "openai"

    def __init__(self, cfg: TeachConfig):
        super().__init__(cfg)
        import openai  # imported here so that `kpod` itself starts without it

        self._openai = openai
        base_url = cfg.resolved_base_url()
        key = cfg.resolved_api_key()
        if key is None and base_url is None:
            raise FatalTeacherError(
                f"no API key: set ${cfg.api_key_env} (or api_key_env), or give base_url for a local server without auth"
            )
        self._secret = key
        self.client = openai.OpenAI(
            api_key=key or NO_KEY_PLACEHOLDER, base_url=base_url, timeout=cfg.timeout_s, max_retries=0
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one request
    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply | RequestFailed]:
        return [self._complete_one(request) for request in requests]

    def _complete_one(self, request: TeacherRequest) -> TeacherReply | RequestFailed:
        attempts = 0

        def attempt() -> TeacherReply:
            nonlocal attempts
            attempts += 1
            with self._lock:
                self.counters.attempts += 1
            return self._attempt(request)

        def on_retry(error: Retryable, wait_s: float) -> None:
            with self._lock:
                self.counters.retries += 1
                self.counters.retry_reasons[error.kind] = self.counters.retry_reasons.get(error.kind, 0) + 1
            log.debug("retrying a %s request after %s (waiting %.2f s)", request.turn, error.kind, wait_s)

        try:
            return call_with_retries(attempt, self.cfg.retry, on_retry)
        except Retryable as error:
            return RequestFailed(error.kind, self.redact(error.message), attempts, error.status)
        except _NotRetryable as error:
            return RequestFailed(error.kind, self.redact(error.message), attempts, error.status)

    def _attempt(self, request: TeacherRequest) -> TeacherReply:
        openai = self._openai
        params = dict(model=self.model, max_tokens=request.max_tokens, temperature=request.temperature,
                      top_p=request.top_p, n=1)
        if request.stop:
            params["stop"] = list(request.stop)
        if request.seed is not None:
            params["seed"] = request.seed
        try:
            if request.chat:
                response = self.client.chat.completions.create(messages=request.messages(), **params)
            else:
                response = self.client.completions.create(prompt=request.prompt, **params)
        except openai.APITimeoutError as e:  # before APIConnectionError: it is one
            raise Retryable("timeout", f"timed out after {self.cfg.timeout_s} s ({type(e).__name__})") from None
        except openai.APIConnectionError as e:
            raise Retryable("connection", f"connection error: {e}") from None
        except openai.APIResponseValidationError as e:
            raise Retryable("malformed", f"malformed response: {e}") from None
        except openai.APIStatusError as e:
            self._raise_for_status(e)
        except json.JSONDecodeError as e:  # a JSON content type with a body that is not JSON
            raise Retryable("malformed", f"response body is not JSON: {e.msg}") from None
        return self._read(response, request)

    def _raise_for_status(self, e) -> None:
        status = e.status_code
        message = f"HTTP {status}: {_short(e.message)}"
        if status == 429 and _error_code(e) == "insufficient_quota":  # a spent budget, not a rate: waiting won't help
            raise FatalTeacherError(f"{self.redact(message)} (model {self.model!r}: the account has no quota left)")
        if status == 429:
            raise Retryable("rate_limit", message, status, parse_retry_after(e.response.headers)) from None
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise Retryable("server_error", message, status, parse_retry_after(e.response.headers)) from None
        if status in _FATAL_STATUS:
            raise FatalTeacherError(f"{self.redact(message)} (model {self.model!r}; check the key, model name and base URL)")
        raise _NotRetryable("bad_request", message, status)

    @staticmethod
    def _read(response, request: TeacherRequest) -> TeacherReply:
        """Text and usage of a response; anything else than a well-formed one is a malformed body (retried)."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise Retryable("malformed", f"response without choices: {_short(repr(response))}")
        choice = choices[0]
        text = getattr(getattr(choice, "message", None), "content", None) if request.chat else getattr(choice, "text", None)
        if not isinstance(text, str):
            raise Retryable("malformed", "response choice without text")
        usage = getattr(response, "usage", None)
        return TeacherReply(
            text=text,
            finish_reason=getattr(choice, "finish_reason", None),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text

    def close(self) -> None:
        self.client.close()


class _NotRetryable(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind, self.message, self.status = kind, message, status


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _error_code(e) -> str | None:
    """The API's error code ("insufficient_quota", ...), from the SDK's parsed error or the raw body."""
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return getattr(e, "code", None) or (body.get("code") if isinstance(body, dict) else None)
