"""What a teacher backend is: one request in, one reply (or a per-request failure) out; backends registered by name.

A backend turns `TeacherRequest`s into `TeacherReply`s. HTTP backends take one request per call and run many calls
at once (`max_concurrency` None); local backends take a batch per call and run one call at a time
(`max_concurrency` 1). A request that fails after its retries comes back as a `RequestFailed` in its slot; an
error that dooms every request (bad API key, unknown model) is raised as `FatalTeacherError` and stops the run.

Backends, by name: `openai` (kpod.teacher.openai_backend), `hf` and `vllm` (kpod.teacher.local_backends). They are
imported only when used, so vllm is never imported unless asked for. A new backend is one class given to
`register_backend`.

    >>> backend = make_backend(cfg)                  # cfg: TeachConfig
    >>> backend.complete([TeacherRequest("Q: 2+2?\\nA: Let's think step by step.", chat=False, max_tokens=64)])
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from kpod.teacher.config import TeachConfig


@dataclass(frozen=True)
class TeacherRequest:
    """One call to a teacher. `prompt` is the whole completion prompt, or the user message in chat mode."""

    prompt: str
    chat: bool
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    system: str | None = None
    stop: tuple[str, ...] = ()
    sample: int = 0  # index among the samples of the same prompt: part of the cache key
    seed: int | None = None
    turn: str = "rationale"  # "rationale" or "answer" (completion mode's second turn); not part of the key
    contrast_prompt: str | None = None  # contrastive decoding against this prompt (backends that see logits)
    contrast_strength: float = 0.0

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.prompt}]

    def contrast_request(self) -> "TeacherRequest":
        """The same request with the contrast prompt in place of the prompt (how a backend renders it)."""
        return replace(self, prompt=self.contrast_prompt, contrast_prompt=None, contrast_strength=0.0)

    def cache_payload(self) -> dict:
        """Everything that decides the reply (what the cache key is made of)."""
        what = {"messages": self.messages()} if self.chat else {"prompt": self.prompt}
        contrast = {} if self.contrast_prompt is None else {  # absent otherwise: older keys stay valid
            "contrast": {"prompt": self.contrast_prompt, "strength": self.contrast_strength}}
        return {
            **what, "chat": self.chat, "max_tokens": self.max_tokens, "temperature": self.temperature,
            "top_p": self.top_p, "stop": list(self.stop), "seed": self.seed, "sample": self.sample, **contrast,
        }  # fmt: skip


@dataclass
class TeacherReply:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False  # answered from the cache in this run


@dataclass
class RequestFailed:
    """A request that got no usable reply after its retries. `kind`: rate_limit, server_error, timeout,
    connection, malformed, bad_request or other. `message` never contains the API key."""

    kind: str
    message: str
    attempts: int = 1
    status: int | None = None


class FatalTeacherError(RuntimeError):
    """An error no retry can fix and every request would hit (authentication, unknown model): the run stops."""


@dataclass
class BackendCounters:
    """Attempts and retries of this backend, for the summary (HTTP backends update them)."""

    attempts: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)


class TeacherBackend(ABC):
    name: ClassVar[str]
    batch_size: int = 1  # requests per complete() call
    max_concurrency: int | None = None  # None: any number of complete() calls may run at once
    # Whether complete() honours a request's contrast prompt (needs the next-token distributions of two prompts);
    # the runner refuses contrastive requests to a backend that would ignore them.
    decodes_contrastively: ClassVar[bool] = False

    def __init__(self, cfg: "TeachConfig"):
        self.cfg = cfg
        self.model = cfg.model
        self.counters = BackendCounters()

    @abstractmethod
    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply | RequestFailed]:
        """One reply or failure per request, in order. Raises FatalTeacherError only for run-ending errors."""

    def close(self) -> None:
        """Release connections or model memory."""


_BACKENDS: dict[str, type[TeacherBackend] | str] = {
    "openai": "kpod.teacher.openai_backend:OpenAIBackend",
    "hf": "kpod.teacher.local_backends:HFBackend",
    "vllm": "kpod.teacher.local_backends:VLLMBackend",
}


def register_backend(name: str, backend: type[TeacherBackend] | str) -> None:
    """Make a backend usable by name: a class, or "module:Class" to import it only when used."""
    _BACKENDS[name] = backend


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[TeacherBackend]:
    if name not in _BACKENDS:
        raise ValueError(f"unknown teacher backend {name!r}; known: {', '.join(backend_names())}")
    target = _BACKENDS[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
        _BACKENDS[name] = target
    return target


def make_backend(cfg: "TeachConfig") -> TeacherBackend:
    return backend_class(cfg.backend)(cfg)
