"""The text formats the student sees: the zero-shot CoT prompt and the distillation target (paper Sec. 3.1).

input : "Q: {question}\\nA: Let's think step by step."
target: " {rationale} Therefore, the answer is {answer}."

Both templates are config options. Multiple-choice questions list their options after the question; their answer
is the letter ("C"), or with `data.answer_choice_text` the letter and the choice ("(C) california").
"""

from __future__ import annotations

from kpod.data.records import Question

DEFAULT_PROMPT = "Q: {question}\nA: Let's think step by step."
DEFAULT_TARGET = " {rationale} Therefore, the answer is {answer}."
CHOICE_LETTERS = "ABCDEFGHIJ"


def question_text(q: Question) -> str:
    """The question as the student reads it; choices, if any, as "Answer Choices: (A) ... (B) ..."."""
    if not q.choices:
        return q.question
    options = " ".join(f"({CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(q.choices))
    return f"{q.question}\nAnswer Choices: {options}"


def render_prompt(q: Question, template: str = DEFAULT_PROMPT) -> str:
    return template.format(question=question_text(q))


def target_answer(q: Question, choice_text: bool = False) -> str:
    """The answer as the target states it: the gold answer; with `choice_text`, a multiple-choice answer names its
    choice after the letter, as the question lists it ("(C) california"), so that the letter has the words the
    rationale reasoned about beside it."""
    if not (choice_text and q.choices):
        return q.answer
    return f"({q.answer}) {q.choices[CHOICE_LETTERS.index(q.answer)]}"


def render_target(rationale: str, answer: str, template: str = DEFAULT_TARGET) -> tuple[str, tuple[int, int]]:
    """The target text and the character span of the rationale inside it (for step and token mapping)."""
    marker = "{rationale}"
    if template.count(marker) != 1:
        raise ValueError(f"target template must contain {marker} exactly once: {template!r}")
    head, tail = template.split(marker)
    head = head.format(answer=answer)
    text = head + rationale + tail.format(answer=answer)
    return text, (len(head), len(head) + len(rationale))


def answer_statement(template: str = DEFAULT_TARGET) -> tuple[str, str]:
    """(cue, answer format) of what follows the rationale in a target template: " Therefore, the answer is" and
    " {answer}." for the default. KPOD's weighting predictor reads the cue after the masked rationale and is scored
    on the answer, both as the student's targets state them."""
    tail = template.split("{rationale}", 1)[-1]
    if "{answer}" not in tail:
        raise ValueError(f"target template must state {{answer}} after {{rationale}} (KPOD's weighting predicts the "
                         f"answer from the rationale): {template!r}")
    before, after = tail.split("{answer}", 1)
    cue = before.rstrip()
    return cue, before[len(cue):] + "{answer}" + after
