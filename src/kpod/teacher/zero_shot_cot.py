"""Zero-shot chain-of-thought prompting (Kojima et al., 2022) and turning a teacher's reply into a `Rationale`.

Completion mode (the paper's two turns):
    turn 1   "Q: {question}\\nA: Let's think step by step."                        -> rationale
    turn 2   "{turn 1 prompt} {rationale}\\nTherefore, the answer is"             -> answer
Chat mode (one turn): the question plus an instruction to reason step by step and end with
"Therefore, the answer is ..."; the answer is read from that closing sentence.

The stored rationale is the reasoning only: a closing "Therefore, the answer is X." is cut off, because the student's
target template adds its own (" {rationale} Therefore, the answer is {answer}."). The answer is read with
`extract_answer` and judged with `answers_match`, like every other rationale in kpod.

    >>> cot = ZeroShotCoT(cfg)
    >>> first = cot.first_request(question, sample=0)
    >>> second = cot.answer_request(first, reply.text)        # completion mode only
    >>> rationale, verdict = cot.to_rationale(question, sample=0, first=reply, answer=answer_reply)
"""

from __future__ import annotations

import re

from kpod.data.answers import answer_type, answers_match, cut_run_on, extract_answer_details
from kpod.data.prompts import question_text
from kpod.data.records import Question, Rationale
from kpod.teacher.backends import TeacherReply, TeacherRequest
from kpod.teacher.config import DEFAULT_CHAT_INSTRUCTION, TeachConfig

# The closing answer statement of a rationale: "Therefore, the answer is 42." / "So the final answer is (B)" /
# a GSM8K-style "#### 42".
_ANSWER_STATEMENT = re.compile(
    r"(?:\b(?:therefore|thus|hence|so)\s*,?\s*)?\b(?:the\s+)?(?:final\s+)?answer\s+is\b|####", re.IGNORECASE
)
STOP_RUN_ON = ("\nQ:",)  # completion models invent the next few-shot item; stop there

# Verdicts: why a finished sample is kept or dropped (counted in the summary).
KEPT, WRONG_ANSWER, NO_ANSWER, EMPTY = "kept", "wrong_answer", "no_answer", "empty_rationale"


def split_answer_statement(text: str) -> tuple[str, str | None]:
    """(reasoning, closing answer statement(s) or None).

    Cut at the last "... the answer is" / "####", and further back over statements that directly precede it
    ("#### 51\nThe answer is 51."), but not over reasoning that follows an early statement."""
    matches = list(_ANSWER_STATEMENT.finditer(text))
    if not matches:
        return text.strip(), None
    cut = matches[-1].start()
    for match in reversed(matches[:-1]):
        between = text[match.start() : cut].strip()
        if "\n" in between or re.search(r"[.!?]\s+\S", between):  # more than one statement sentence
            break
        cut = match.start()
    return text[:cut].strip(), text[cut:].strip()


class ZeroShotCoT:
    def __init__(self, cfg: TeachConfig):
        self.cfg = cfg
        self.kind = cfg.answer_kind
        t = cfg.templates
        self.instruction = t.instruction or DEFAULT_CHAT_INSTRUCTION.get(answer_type(self.kind), DEFAULT_CHAT_INSTRUCTION["number"])

    @property
    def two_turns(self) -> bool:
        return self.cfg.mode == "completion"

    def first_request(self, question: Question, sample: int) -> TeacherRequest:
        cfg, t = self.cfg, self.cfg.templates
        text = question_text(question)
        seed = None if cfg.seed is None else cfg.seed + sample
        if self.two_turns:
            return TeacherRequest(t.prompt.format(question=text), chat=False, max_tokens=cfg.max_tokens,
                                  temperature=cfg.temperature, top_p=cfg.top_p, stop=STOP_RUN_ON, sample=sample,
                                  seed=seed, turn="rationale")
        return TeacherRequest(t.chat.format(question=text, instruction=self.instruction), chat=True,
                              max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              system=t.system, sample=sample, seed=seed, turn="rationale")

    def answer_request(self, first: TeacherRequest, first_text: str) -> TeacherRequest:
        """Turn 2 of completion mode: greedy, short; its key includes the sample index of its rationale."""
        prompt = self.cfg.templates.answer.format(prompt=first.prompt, rationale=cut_run_on(first_text).strip())
        return TeacherRequest(prompt, chat=False, max_tokens=self.cfg.answer_max_tokens, temperature=0.0, top_p=1.0,
                              stop=STOP_RUN_ON, sample=first.sample, turn="answer")

    def to_rationale(
        self, question: Question, sample: int, first: TeacherReply, answer: TeacherReply | None = None
    ) -> tuple[Rationale, str]:
        """The Rationale of one finished sample and its verdict (kept, wrong_answer, no_answer, empty_rationale)."""
        text = cut_run_on(first.text)
        reasoning, _ = split_answer_statement(text)
        choices = question.choices
        in_text = extract_answer_details(text, self.kind, choices)
        meta = {"backend": self.cfg.backend, "mode": self.cfg.mode, "finish_reason": first.finish_reason}
        if answer is not None:  # the answer turn decides; the reasoning's own answer is kept for inspection
            stated = extract_answer_details("Therefore, the answer is" + cut_run_on(answer.text), self.kind, choices)
            predicted = stated.answer
            meta["answer_in_text"] = in_text.answer
            meta["text_agrees"] = answers_match(in_text.answer, predicted, self.kind)
        else:
            predicted = in_text.answer
            meta["answer_source"] = in_text.source
        correct = answers_match(predicted, question.answer, self.kind)
        rationale = Rationale(id=question.id, rationale=reasoning, teacher=self.cfg.model, answer=predicted,
                              gold=question.answer, correct=correct, sample=sample, meta=meta)
        if not reasoning:
            verdict = EMPTY
        elif predicted is None:
            verdict = NO_ANSWER
        else:
            verdict = KEPT if correct else WRONG_ANSWER
        return rationale, verdict
