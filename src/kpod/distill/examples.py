"""Turn (question, rationale) pairs into token-level training examples that every trainer shares.

An `EncodedExample` keeps the prompt and target token ids, the token span of every rationale step inside the
target, and where the answer sentence starts. Plain CoT distillation supervises the whole target; KPOD hides the
first c steps from the loss (they become teacher-forced input) and weights the rest by token significance.

    >>> examples, report = encode_examples(tokenizer, questions, rationales, max_length=384)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from kpod.data.prompts import DEFAULT_PROMPT, DEFAULT_TARGET, render_prompt, render_target, target_answer
from kpod.data.records import Question, Rationale
from kpod.data.steps import split_steps, step_token_spans


@dataclass
class EncodedExample:
    key: str  # "{question id}#{teacher}#{sample}"
    question_id: str
    prompt_ids: list[int]
    target_ids: list[int]  # ends with the end-of-sequence token
    step_spans: list[tuple[int, int]]  # [start, end) of each step, indices into target_ids
    answer_start: int  # first target token of the answer sentence ("Therefore, the answer is ...")

    @property
    def n_steps(self) -> int:
        return len(self.step_spans)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)

    def to_json(self) -> dict:
        return asdict(self)


def rationale_key(r: Rationale) -> str:
    return f"{r.id}#{r.teacher}#{r.sample}"


def encode_examples(
    tokenizer,
    questions: dict[str, Question],
    rationales: list[Rationale],
    *,
    prompt_template: str = DEFAULT_PROMPT,
    target_template: str = DEFAULT_TARGET,
    splitter: str = "period",
    max_length: int = 384,
    progress: bool = True,
    answer_choice_text: bool = False,
) -> tuple[list[EncodedExample], dict]:
    """Encode rationales; sequences longer than `max_length` tokens are skipped and counted, never cut silently.
    answer_choice_text: multiple-choice answers as "(C) california" (`kpod.data.prompts.target_answer`)."""
    examples, skipped = [], Counter()
    eos = tokenizer.eos_token_id
    for r in tqdm(rationales, desc="tokenising", disable=not progress, mininterval=2):
        q = questions.get(r.id)
        if q is None:
            skipped["question_not_found"] += 1
            continue
        prompt_ids = tokenizer(render_prompt(q, prompt_template)).input_ids
        target, (r0, r1) = render_target(r.rationale, target_answer(q, answer_choice_text), target_template)
        enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
        target_ids = list(enc.input_ids) + [eos]
        if len(prompt_ids) + len(target_ids) > max_length:
            skipped["over_max_length"] += 1
            continue
        char_steps = [(s + r0, e + r0) for s, e in split_steps(r.rationale, splitter)]
        if not char_steps:
            skipped["empty_rationale"] += 1
            continue
        offsets = enc.offset_mapping
        spans = step_token_spans(offsets, char_steps, target)
        answer_start = next((j for j, (s, e) in enumerate(offsets) if e > s and s >= r1), len(enc.input_ids))
        examples.append(
            EncodedExample(rationale_key(r), r.id, list(prompt_ids), target_ids, spans, answer_start)
        )
    lengths = [len(e) for e in examples]
    report = {
        "examples": len(examples),
        "skipped": dict(skipped),
        "max_length": max_length,
        "mean_tokens": round(sum(lengths) / max(1, len(lengths)), 1),
        "max_tokens": max(lengths, default=0),
        "mean_steps": round(sum(e.n_steps for e in examples) / max(1, len(examples)), 2),
    }
    return examples, report
