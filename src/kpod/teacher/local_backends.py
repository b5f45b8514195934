"""Local teacher backends: `hf` (a Hugging Face causal LM, batched `generate` on CPU or one GPU) and `vllm`.

`hf` loads the model with `kpod.models.load_student` (so "smollm2-135m-instruct", hub ids and folders all work)
and generates with `kpod.evaluation.generate.generate`: greedy at temperature 0, nucleus sampling otherwise; a
sequence stops at its end token, a finished "the answer is X." sentence or a run-on "\\nQ:" (the request's stop
strings are those). A request with a contrast prompt (`rationalize`, SCOTT's teacher) is decoded contrastively
(`kpod.evaluation.generate.contrastive_scores`): only this backend sees the logits that needs. Chat requests are
rendered with the tokenizer's chat template. Sampling is seeded per batch (`seed` + the batch's first sample index),
so it repeats for the same batches, not across a resumed run.

`vllm` (the optional extra `pip install kpod[vllm]`, needs a GPU) is imported only when this backend is built. Its
code path follows vLLM's offline `LLM.generate` API with one `SamplingParams` per request; kpod's own tests cannot
run it (no GPU, no vllm wheel in the test environment).

    kpod teach --backend hf --model smollm2-135m-instruct --mode completion --dataset svamp --limit 50
"""

from __future__ import annotations

import logging
from itertools import groupby

from kpod.teacher.backends import FatalTeacherError, TeacherBackend, TeacherReply, TeacherRequest
from kpod.teacher.config import TeachConfig

log = logging.getLogger(__name__)


def _same_settings(request: TeacherRequest) -> tuple:
    contrastive = request.contrast_prompt is not None
    return (request.chat, request.max_tokens, request.temperature, request.top_p, contrastive,
            request.contrast_strength if contrastive else 0.0)


class HFBackend(TeacherBackend):
    name = "hf"
    max_concurrency = 1  # one model, one batch at a time
    decodes_contrastively = True

    def __init__(self, cfg: TeachConfig):
        super().__init__(cfg)
        from kpod.models import load_student

        self.batch_size = cfg.batch_size
        self.lm, self.tokenizer = load_student(cfg.model)
        self.lm.to(cfg.device)

    def render(self, request: TeacherRequest) -> str:
        if not request.chat:
            return request.prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise FatalTeacherError(f"{self.model!r} has no chat template: use mode 'completion'")
        return self.tokenizer.apply_chat_template(request.messages(), tokenize=False, add_generation_prompt=True)

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        from kpod.evaluation.generate import generate

        replies: list[TeacherReply | None] = [None] * len(requests)
        indexed = sorted(range(len(requests)), key=lambda i: _same_settings(requests[i]))
        for settings, group in groupby(indexed, key=lambda i: _same_settings(requests[i])):
            group = list(group)
            _, max_tokens, temperature, top_p, contrastive, strength = settings
            seed = (self.cfg.seed or 0) + requests[group[0]].sample
            contrast = [self.render(requests[i].contrast_request()) for i in group] if contrastive else None
            texts, stats = generate(self.lm, self.tokenizer, [self.render(requests[i]) for i in group],
                                    batch_size=len(group), max_new_tokens=max_tokens, temperature=temperature,
                                    top_p=top_p, seed=seed, progress=False, return_token_counts=True,
                                    contrast_prompts=contrast, contrast_strength=strength)
            for k, i in enumerate(group):
                new = stats["new_tokens"][k]
                replies[i] = TeacherReply(texts[k], "length" if new >= max_tokens else "stop",
                                          stats["prompt_tokens"][k], new)
        return replies

    def close(self) -> None:
        del self.lm


class VLLMBackend(TeacherBackend):
    name = "vllm"
    max_concurrency = 1  # vLLM batches internally; one call at a time

    def __init__(self, cfg: TeachConfig):
        super().__init__(cfg)
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise FatalTeacherError("the vllm backend needs vLLM and a GPU: `pip install kpod[vllm]`") from None
        from kpod.models import resolve_student

        self._sampling_params = SamplingParams
        self.batch_size = cfg.batch_size
        self.llm = LLM(model=resolve_student(cfg.model), seed=cfg.seed or 0)
        self.tokenizer = self.llm.get_tokenizer()

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        prompts = [
            self.tokenizer.apply_chat_template(r.messages(), tokenize=False, add_generation_prompt=True) if r.chat
            else r.prompt
            for r in requests
        ]
        params = [
            self._sampling_params(n=1, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                  stop=list(r.stop) or None, seed=r.seed)
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        replies = []
        for output in outputs:
            best = output.outputs[0]
            replies.append(TeacherReply(best.text, best.finish_reason, len(output.prompt_token_ids or []),
                                        len(best.token_ids)))
        return replies
