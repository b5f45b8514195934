"""The validated configuration of one `kpod teach` run (pydantic), read from YAML and/or command-line flags.

Every field has help text. The resolved config is saved as `OUT/config.yaml` with the API key left out: a key
belongs in an environment variable (`api_key_env`, default OPENAI_API_KEY); `api_key` in a file works but is
discouraged and is never written anywhere.

    >>> cfg = load_teach_config("configs/teach-svamp-gpt35.yaml", {"limit": 50})
    >>> cfg = load_teach_config(None, {"backend": "hf", "model": "smollm2-135m-instruct", "mode": "completion"})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from kpod.config import load_yaml_model
from kpod.data.prompts import DEFAULT_PROMPT
from kpod.teacher.backends import backend_class, backend_names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


DEFAULT_CHAT_INSTRUCTION = {
    "number": 'Let\'s think step by step. End with "Therefore, the answer is" followed by the final number.',
    "choice": 'Let\'s think step by step. End with "Therefore, the answer is" followed by the letter of the answer choice.',
}


class TemplateConfig(_Strict):
    """Zero-shot CoT (Kojima et al. 2022). Completion mode is the paper's two turns; chat mode is one turn."""

    prompt: str = Field(DEFAULT_PROMPT, description="completion mode, turn 1 (reasoning); {question} is replaced")
    answer: str = Field(
        "{prompt} {rationale}\nTherefore, the answer is",
        description="completion mode, turn 2 (answer extraction); {prompt} and {rationale} are replaced",
    )
    chat: str = Field(
        "{question}\n\n{instruction}", description="chat mode, the user message; {question} and {instruction} are replaced"
    )
    instruction: str | None = Field(
        None, description="chat mode instruction; default: reason step by step and end with 'Therefore, the answer is ...'"
    )
    system: str | None = Field(None, description="chat mode system message (none by default)")


class RationalizeConfig(_Strict):
    """SCOTT's teacher (Wang et al. 2023): the prompt names the answer and the teacher explains it, decoding
    contrastively against the same prompt naming another answer, so that it writes the tokens that its answer (not
    the question alone) makes likely. Off by default (the paper's zero-shot CoT)."""

    enabled: bool = Field(False, description="prompt with the answer to explain (rationalization) instead of zero-shot CoT")
    target: Literal["gold", "perturbed"] = Field(
        "gold", description="the answer explained: the gold one, or a perturbed one (SCOTT's counterfactual rationales)"
    )
    contrast: Literal["other", "empty", "none"] = Field(
        "other",
        description="what the contrast prompt names instead: the other answer (perturbed for a gold target, gold for a "
        "perturbed one), no answer, or none (plain greedy rationalization, no contrastive decoding)",
    )
    strength: float = Field(0.5, ge=0, description="contrastive decoding: score = log p(t|prompt) - strength * log p(t|contrast)")
    seed: int = Field(0, description="seed of the perturbed answers (drawn per question as baselines.scott draws them)")
    prompt: str = Field(
        "Q: {question}\nThe answer is {answer}. Explain why.\nA: Let's think step by step.",
        description="completion mode, turn 1; {question} and {answer} are replaced (turn 2 asks the answer without it)",
    )
    chat: str = Field(
        "{question}\n\nThe answer is {answer}. Explain step by step why, and end with \"Therefore, the answer is {answer}.\"",
        description="chat mode, the user message; {question} and {answer} are replaced",
    )


class RetryConfig(_Strict):
    """Retries of one HTTP request (429, 5xx, timeouts, connection errors, malformed bodies)."""

    max_retries: int = Field(5, ge=0, description="retries after the first attempt; 0 = fail at the first error")
    backoff_initial_s: float = Field(1.0, ge=0, description="first backoff wait; doubles per retry (with jitter)")
    backoff_max_s: float = Field(30.0, ge=0, description="longest backoff wait")
    max_retry_after_s: float = Field(
        120.0, ge=0, description="a server's Retry-After is waited exactly, up to this many seconds (then capped)"
    )


class PriceConfig(_Strict):
    prompt_per_1k: float | None = Field(None, ge=0, description="price of 1,000 prompt tokens (e.g. USD); none = no cost")
    completion_per_1k: float | None = Field(None, ge=0, description="price of 1,000 completion tokens")


class TeachConfig(_Strict):
    # what to ask about
    dataset: str = Field("svamp", description="gsm8k, asdiv, svamp, csqa, or 'custom' with `file`")
    split: Literal["train", "dev", "test"] = Field("train", description="split of the benchmark")
    file: str | None = Field(None, description="custom dataset: a JSONL of questions (see kpod.data.custom)")
    answer_type: Literal["number", "choice"] = Field("number", description="custom dataset: how answers are read")
    data_dir: str | None = Field(None, description="data folder; default $KPOD_DATA_DIR or the data shipped with kpod")
    limit: int | None = Field(None, ge=1, description="only the first N questions")

    # who answers
    backend: str = Field("openai", description="teacher backend: openai (any OpenAI-compatible API), hf, vllm")
    model: str = Field("gpt-3.5-turbo", description="model name (API) or hub id / folder / 'smollm2-135m-instruct' (hf, vllm)")
    mode: Literal["chat", "completion"] = Field(
        "chat", description="chat: one turn that ends with the answer; completion: the paper's two turns (reason, then answer)"
    )
    base_url: str | None = Field(None, description="API base URL; default from the variable named by base_url_env")
    base_url_env: str = Field("OPENAI_BASE_URL", description="environment variable holding the base URL")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    api_key: SecretStr | None = Field(None, description="the API key itself (discouraged: use api_key_env); never written out")

    # sampling
    n: int = Field(1, ge=1, description="rationales per question (multi-rationale baselines want several)")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy; several samples want > 0")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    seed: int | None = Field(None, description="sample k is asked with seed + k where the API supports seeds; hf draws a batch of prompts from one generator seeded with seed + the k of its first request")
    max_tokens: int = Field(256, ge=1, description="longest rationale (turn 1 / the chat answer) in tokens")
    answer_max_tokens: int = Field(32, ge=1, description="completion mode: longest answer turn")
    templates: TemplateConfig = Field(default_factory=TemplateConfig)
    rationalize: RationalizeConfig = Field(default_factory=RationalizeConfig)

    # how fast, how robust
    concurrency: int = Field(8, ge=1, description="requests in flight at once (HTTP); local backends run one batch at a time")
    batch_size: int = Field(16, ge=1, description="prompts per generate call (hf, vllm)")
    timeout_s: float = Field(60.0, gt=0, description="one HTTP request's time limit; a timeout is retried")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    device: str = Field("cpu", description="hf backend: torch device")

    # outputs
    out: str = Field("runs/teach", description="output folder: rationales.jsonl, rejected.jsonl, failures.jsonl, summary.json")
    cache: str | None = Field(None, description="SQLite reply cache; default OUT/cache.sqlite (share one across runs to reuse replies)")
    keep_wrong: bool = Field(False, description="also write rationales with a wrong or missing answer to rationales.jsonl (correct=false); empty ones never")
    drop_truncated: bool = Field(True, description="drop a rationale the teacher stopped at max_tokens (finish reason 'length'): it ends mid-reasoning, whatever answer is read from it")
    stop_after_failures: int = Field(50, ge=0, description="stop the run (exit code 2) once this many samples in a row failed after their retries (a wrong URL, no quota, a parameter the API refuses); 0 = never")
    prices: PriceConfig = Field(default_factory=PriceConfig)

    @model_validator(mode="after")
    def _custom_needs_file(self):
        if self.dataset == "custom" and not self.file:
            raise ValueError("dataset 'custom' needs `file` (a JSONL of questions)")
        return self

    @model_validator(mode="after")
    def _contrast_needs_logits(self):
        r = self.rationalize
        if not (r.enabled and r.contrast != "none") or self.backend not in backend_names():
            return self  # an unknown backend is refused when it is built
        if not backend_class(self.backend).decodes_contrastively:
            raise ValueError(f"rationalize.contrast {r.contrast!r} (contrastive decoding) needs the next-token "
                             f"distributions of two prompts: backend 'hf', not {self.backend!r} (or contrast 'none')")
        return self

    @property
    def answer_kind(self) -> str:
        """Name under which answers are extracted and compared (dataset name, or the custom answer type)."""
        return self.answer_type if self.dataset == "custom" else self.dataset

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get(self.base_url_env) or None

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get(self.api_key_env) or None

    def cache_path(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.out) / "cache.sqlite"

    def public_dump(self) -> dict:
        """The config as plain data, without the API key (safe to write next to the results)."""
        return self.model_dump(mode="json", exclude={"api_key"})


def load_teach_config(path: str | Path | None, overrides: dict | None = None) -> TeachConfig:
    """Validate a YAML file (or nothing) plus dotted overrides; errors name the file and the field."""
    return load_yaml_model(TeachConfig, path, overrides, what="teach config")


def dump_teach_config(cfg: TeachConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.public_dump(), sort_keys=False))
