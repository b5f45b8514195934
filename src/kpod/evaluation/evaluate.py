"""Accuracy of a student on a split: generate from the question alone, extract, compare with gold.

Writes a predictions JSONL (question id, output, extracted, gold, correct, diagnostics) and a results JSON with
dataset, split, n, accuracy (percent), method, model, seed, commit and generation throughput. Under several
processes (`accelerate launch`) each generates for its shard of the questions; the main process writes the files.

    >>> results = evaluate_questions(model, tok, questions, dataset="svamp", split="test", out_dir=Path("eval/test"))
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from kpod import distributed as dist
from kpod.data.answers import answers_match, extract_answer_details
from kpod.data.prompts import DEFAULT_PROMPT, render_prompt
from kpod.data.records import Question, write_jsonl
from kpod.evaluation.generate import generate


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict:
    """Where a result was computed. The library versions are part of it: a config and seed retrain the same student
    on the same kind of machine and libraries, not necessarily on others."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version(),
            **{lib: _version(lib) for lib in ("transformers", "peft", "accelerate")}}


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def merge_generation_stats(per_process: list[dict]) -> dict:
    """Generation statistics of processes that ran side by side: token counts add up, the wall time is the
    slowest process's."""
    total = {k: sum(s[k] for s in per_process) for k in ("prefill_tokens", "computed_tokens", "useful_tokens")}
    wall = max(s["wall_s"] for s in per_process)
    return {**per_process[0], **total, "wall_s": wall, "processes": len(per_process),
            "useful_tokens_per_s": round(total["useful_tokens"] / wall, 1) if wall else None,
            "useful_over_computed": round(total["useful_tokens"] / max(1, total["computed_tokens"]), 3)}


def evaluate_questions(
    model, tokenizer, questions: list[Question], *, dataset: str, split: str, out_dir: Path | None = None,
    method: str = "", model_name: str = "", seed: int = 0, prompt_template: str = DEFAULT_PROMPT,
    batch_size: int = 32, max_new_tokens: int = 200, progress: bool = True, engine: str = "hf",
    engine_dir: Path | None = None,
) -> dict:
    """engine 'hf': kpod's batched decoding (sharded over processes); 'vllm': vLLM in this process, with the
    model exported to `engine_dir` (see `kpod.evaluation.vllm_engine`)."""
    prompts = [render_prompt(q, prompt_template) for q in questions]
    if engine == "vllm":
        if dist.world_size() > 1:
            raise RuntimeError("eval.engine 'vllm' runs in one process (vLLM spreads over the GPUs itself): "
                               "evaluate with `kpod eval` outside accelerate launch")
        from kpod.evaluation.vllm_engine import generate_with_vllm

        outputs, gen_stats = generate_with_vllm(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                work_dir=engine_dir or Path("vllm-model"), seed=seed, progress=progress)
    elif engine == "hf":
        outputs, gen_stats = generate(model, tokenizer, dist.shard(prompts), batch_size=batch_size,
                                      max_new_tokens=max_new_tokens, progress=progress)
        if dist.world_size() > 1:
            outputs, gen_stats = dist.gather(outputs), merge_generation_stats(dist.gather([gen_stats]))
    else:
        raise ValueError(f"unknown evaluation engine {engine!r}: 'hf' or 'vllm'")
    rows, n_correct, n_strict_correct, n_no_answer = [], 0, 0, 0
    for q, out in zip(questions, outputs):
        det = extract_answer_details(out, dataset, q.choices)
        correct = answers_match(det.answer, q.answer, dataset, q.choices)
        n_correct += correct
        n_strict_correct += correct and det.source == "strict"
        n_no_answer += det.answer is None
        rows.append({"id": q.id, "output": out, "extracted": det.answer, "gold": q.answer, "correct": correct,
                     "source": det.source, "rule": det.rule, "looks_truncated": det.looks_truncated})
    n = len(questions)
    results = {
        "dataset": dataset,
        "split": split,
        "n": n,
        "correct": n_correct,
        "accuracy": round(100.0 * n_correct / max(1, n), 2),
        "accuracy_strict": round(100.0 * n_strict_correct / max(1, n), 2),
        "no_answer": n_no_answer,
        "method": method,
        "model": model_name,
        "seed": seed,
        "commit": git_commit(),
        "machine": machine(),
        "generation": gen_stats,
    }
    if out_dir is not None and dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(out_dir / "predictions.jsonl", rows)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results
