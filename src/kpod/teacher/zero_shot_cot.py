"""Zero-shot chain-of-thought prompting (Kojima et al., 2022) and turning a teacher's reply into a `Rationale`.

Completion mode (the paper's two turns):
    turn 1   "Q: {question}\\nA: Let's think step by step."                        -> rationale
    turn 2   "{turn 1 prompt} {rationale}\\nTherefore, the answer is"             -> answer
Chat mode (one turn): the question plus an instruction to reason step by step and end with
"Therefore, the answer is ..."; the answer is read from that closing sentence.

Rationalization (`rationalize.enabled`, SCOTT's teacher): turn 1 names the answer to explain ("The answer is 7.
Explain why.") and, unless `rationalize.contrast` is "none", carries a contrast prompt that names another answer (or
none), for the backend to decode contrastively; turn 2 (completion mode) asks the answer from the zero-shot prompt
and the rationale alone, so a kept rationale is one that leads to its answer without being told. The explained
answer is the gold one, or (`rationalize.target: perturbed`) the perturbed answer SCOTT's counterfactual objective
trains on; the rationale's `gold` is then that answer and `meta.gold_answer` the real one.

The stored rationale is the reasoning only: a closing answer statement ("Therefore, the answer is X.", "Answer: X",
"#### X") is cut off as `kpod.data.rationales.split_answer_statement` cuts the released rationales', because the
student's target template adds its own (" {rationale} Therefore, the answer is {answer}."). The answer is read with
`extract_answer` and judged with `answers_match`, like every other rationale in kpod. A rationale the teacher was
stopped in (finish reason "length") is dropped unless `drop_truncated` is off.

    >>> cot = ZeroShotCoT(cfg)
    >>> first = cot.first_request(question, sample=0)
    >>> second = cot.answer_request(question, first, reply.text)        # completion mode only
    >>> rationale, verdict = cot.to_rationale(question, sample=0, first=reply, answer=answer_reply)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kpod.data.answers import answer_type, answers_match, cut_run_on, extract_answer_details
from kpod.data.prompts import question_text, target_answer
from kpod.data.rationales import split_answer_statement
from kpod.data.records import Question, Rationale
from kpod.teacher.backends import TeacherReply, TeacherRequest
from kpod.teacher.config import DEFAULT_CHAT_INSTRUCTION, TeachConfig

STOP_RUN_ON = ("\nQ:",)  # completion models invent the next few-shot item; stop there

# Verdicts: why a finished sample is kept or dropped (counted in the summary).
KEPT, WRONG_ANSWER, NO_ANSWER, EMPTY, TRUNCATED = "kept", "wrong_answer", "no_answer", "empty_rationale", "truncated"


@dataclass(frozen=True)
class Explained:
    """Rationalization: the answer the teacher explains, and the one its contrast prompt names ("" for none; None:
    no contrast prompt)."""

    answer: str
    contrast: str | None


class ZeroShotCoT:
    def __init__(self, cfg: TeachConfig):
        self.cfg = cfg
        self.kind = cfg.answer_kind
        t = cfg.templates
        self.instruction = t.instruction or DEFAULT_CHAT_INSTRUCTION.get(answer_type(self.kind), DEFAULT_CHAT_INSTRUCTION["number"])

    @property
    def two_turns(self) -> bool:
        return self.cfg.mode == "completion"

    def explained(self, question: Question) -> Explained | None:
        """What a rationalizing teacher explains for `question`, and against what; None when it needs a perturbed
        answer that cannot be drawn (the question is then skipped). Not rationalizing: the gold answer, no contrast."""
        r = self.cfg.rationalize
        if not r.enabled:
            return Explained(question.answer, None)
        from kpod.baselines.scott import perturbed_answer  # the same a' as baselines.scott draws under this seed

        perturbed = perturbed_answer(question, answer_type(self.kind), r.seed)
        answer, other = (perturbed, question.answer) if r.target == "perturbed" else (question.answer, perturbed)
        if answer is None or (r.contrast == "other" and other is None):
            return None
        return Explained(answer, {"other": other, "empty": "", "none": None}[r.contrast])

    def _shown(self, question: Question, answer: str) -> str:
        """An answer as the rationalization prompt names it: "(C) california" for a choice, else as it is."""
        return target_answer(replace(question, answer=answer), choice_text=True) if answer else ""

    def first_request(self, question: Question, sample: int) -> TeacherRequest:
        cfg, t = self.cfg, self.cfg.templates
        text = question_text(question)
        seed = None if cfg.seed is None else cfg.seed + sample
        if cfg.rationalize.enabled:
            return self._rationalize_request(question, text, sample, seed)
        if self.two_turns:
            return TeacherRequest(t.prompt.format(question=text), chat=False, max_tokens=cfg.max_tokens,
                                  temperature=cfg.temperature, top_p=cfg.top_p, stop=STOP_RUN_ON, sample=sample,
                                  seed=seed, turn="rationale")
        return TeacherRequest(t.chat.format(question=text, instruction=self.instruction), chat=True,
                              max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              system=t.system, sample=sample, seed=seed, turn="rationale")

    def _rationalize_request(self, question: Question, text: str, sample: int, seed: int | None) -> TeacherRequest:
        cfg, r = self.cfg, self.cfg.rationalize
        explained = self.explained(question)
        if explained is None:
            raise ValueError(f"question {question.id}: no perturbed answer to explain or contrast with")
        template = r.prompt if self.two_turns else r.chat
        prompt, contrast = (None if answer is None else template.format(question=text, answer=self._shown(question, answer))
                            for answer in (explained.answer, explained.contrast))
        return TeacherRequest(prompt, chat=not self.two_turns, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, system=None if self.two_turns else cfg.templates.system,
                              stop=STOP_RUN_ON if self.two_turns else (), sample=sample, seed=seed, turn="rationale",
                              contrast_prompt=contrast, contrast_strength=r.strength if contrast is not None else 0.0)

    def answer_request(self, question: Question, first: TeacherRequest, first_text: str) -> TeacherRequest:
        """Turn 2 of completion mode: greedy, short; its key includes the sample index of its rationale. It reads
        the zero-shot prompt (never one that names the answer) and the rationale."""
        zero_shot = self.cfg.templates.prompt.format(question=question_text(question))
        prompt = self.cfg.templates.answer.format(prompt=zero_shot, rationale=cut_run_on(first_text).strip())
        return TeacherRequest(prompt, chat=False, max_tokens=self.cfg.answer_max_tokens, temperature=0.0, top_p=1.0,
                              stop=STOP_RUN_ON, sample=first.sample, turn="answer")

    def to_rationale(
        self, question: Question, sample: int, first: TeacherReply, answer: TeacherReply | None = None
    ) -> tuple[Rationale, str]:
        """The Rationale of one finished sample and its verdict (kept, wrong_answer, no_answer, empty_rationale,
        truncated)."""
        text = cut_run_on(first.text)
        reasoning = split_answer_statement(text, keep_statement_alone=False)[0].strip()  # an answer alone is none
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
        explained = self.explained(question)
        if self.cfg.rationalize.enabled:
            meta["rationalized"] = {"target": self.cfg.rationalize.target, "contrast": self.cfg.rationalize.contrast,
                                    "contrast_answer": explained.contrast, "strength": self.cfg.rationalize.strength}
            if explained.answer != question.answer:
                meta["gold_answer"] = question.answer
        correct = answers_match(predicted, explained.answer, self.kind, choices)
        rationale = Rationale(id=question.id, rationale=reasoning, teacher=self.cfg.model, answer=predicted,
                              gold=explained.answer, correct=correct, sample=sample, meta=meta)
        if not reasoning:
            verdict = EMPTY
        elif first.finish_reason == "length" and self.cfg.drop_truncated:
            verdict = TRUNCATED  # cut off mid-reasoning; an answer read from it is a guess
        elif predicted is None:
            verdict = NO_ANSWER
        else:
            verdict = KEPT if correct else WRONG_ANSWER
        return rationale, verdict
