"""Evaluation generation with vLLM on GPU machines (`eval.engine: vllm`; `pip install kpod[vllm]`).

vLLM loads models from a folder, so the student (LoRA adapters merged into a copy) is saved once next to the
evaluation results and loaded from there. Decoding is greedy, as in `kpod.evaluation.generate`; vLLM stops at
the end token or a run-on "\\nQ:", and the output is then cut after its answer sentence with the same
`trim_output`, so both engines hand the same kind of text to answer extraction. vLLM keeps its own batch full
(continuous batching), so no compute is spent on finished sequences.

    >>> texts, stats = generate_with_vllm(model, tokenizer, prompts, max_new_tokens=200, work_dir=run / "eval" / "model")
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from kpod.evaluation.generate import trim_output


def export_for_vllm(model, tokenizer, folder: Path) -> Path:
    """Save the model (LoRA merged into a copy, the caller's model untouched) and its tokenizer to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
    plain.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def generate_with_vllm(model, tokenizer, prompts: list[str], *, max_new_tokens: int, work_dir: Path,
                       seed: int = 0, progress: bool = True) -> tuple[list[str], dict]:
    """Greedy outputs for `prompts` (input order) and statistics like `generate`'s."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise RuntimeError("eval.engine 'vllm' needs vLLM and a GPU: pip install kpod[vllm] (or set eval.engine: hf)") from None
    folder = export_for_vllm(model, tokenizer, Path(work_dir))
    llm = LLM(model=str(folder), seed=seed)
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_new_tokens, stop=["\nQ:"])
    t0 = time.time()
    results = llm.generate(prompts, params, use_tqdm=progress)
    wall = time.time() - t0
    outputs = [trim_output(r.outputs[0].text) for r in results]
    prompt_tokens = sum(len(r.prompt_token_ids or []) for r in results)
    new_tokens = sum(len(r.outputs[0].token_ids) for r in results)
    stats = {
        "engine": "vllm", "prefill_tokens": prompt_tokens, "computed_tokens": new_tokens, "useful_tokens": new_tokens,
        "wall_s": wall, "useful_tokens_per_s": round(new_tokens / wall, 1) if wall else None,
        "useful_over_computed": 1.0,
    }
    return outputs, stats
