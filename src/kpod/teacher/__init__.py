"""Teacher rationales: zero-shot CoT (Kojima et al.) from an LLM backend, cached, resumable, filtered.

Command line (flags, a YAML config, or both; flags win; `--set key=value` reaches any field):

    kpod teach --dataset svamp --split train --backend openai --model gpt-3.5-turbo --out runs/teach-svamp \\
               --n 1 --temperature 0 --limit 50 --concurrency 8
    kpod teach configs/teach-svamp-smollm2.yaml            # local SmolLM2 on CPU (hf backend)
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 kpod teach --model my-served-model --mode completion

The output folder holds `rationales.jsonl` (kpod's `Rationale` rows; use it as `data.rationale_source` in a run
config), `rejected.jsonl`, `failures.jsonl`, `summary.json` (counts, tokens, cost) and `cache.sqlite`. Re-running
the same command answers from the cache; a killed run resumes where it stopped. See `kpod.teacher.config` for
every option, `kpod.teacher.runner` for how a run proceeds.

    >>> from kpod.teacher import load_teach_config, run_teach
    >>> summary = run_teach(load_teach_config(None, {"backend": "hf", "model": "smollm2-135m-instruct", "limit": 5}))
"""

from kpod.teacher.backends import (
    FatalTeacherError,
    RequestFailed,
    TeacherBackend,
    TeacherReply,
    TeacherRequest,
    backend_names,
    make_backend,
    register_backend,
)
from kpod.teacher.cache import ReplyCache
from kpod.teacher.config import TeachConfig, load_teach_config
from kpod.teacher.runner import TeachRun, load_teach_questions, run_teach
from kpod.teacher.zero_shot_cot import ZeroShotCoT

__all__ = [
    "FatalTeacherError", "ReplyCache", "RequestFailed", "TeachConfig", "TeachRun", "TeacherBackend", "TeacherReply",
    "TeacherRequest", "ZeroShotCoT", "backend_names", "load_teach_config", "load_teach_questions", "make_backend",
    "register_backend", "run_teach",
]  # fmt: skip
