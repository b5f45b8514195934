"""SCOTT, self-consistent chain-of-thought distillation (Wang et al., ACL 2023): the student is trained to answer
consistently with the rationale it is given, through a factual and a counterfactual objective.

    factual        question -> rationale + answer                          (plain CoT loss)
    counterfactual question + perturbed rationale (given, no loss) -> the answer that rationale leads to

    L = L_factual + baselines.scott.counterfactual_weight * L_counterfactual

SCOTT's teacher wrote the counterfactual rationales itself (contrastive decoding towards a perturbed answer).
`kpod teach` does that with a local model (rationalize.target 'perturbed'; `baselines.scott.counterfactual_rationales`
reads its output). The released data has none, so by default the counterfactual rationale is the factual one edited
to reach another answer: a perturbed answer a' is drawn per question, and every mention of the gold answer in the
rationale is replaced by a' (numbers compared by value; for multiple choice, the chosen option's text and letter).
Rationales that never state the answer get no counterfactual (counted in train/method.json). See docs/methods.md.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import replace
from fractions import Fraction

import numpy as np
import torch

from kpod.baselines.common import TermLoggingTrainer, supervised_tokens, token_nll, weighted_mean
from kpod.distill.dataset import hide_given_steps
from kpod.baselines.registry import MethodContext, MethodSpec, TrainingSetup
from kpod.data.answers import answer_type
from kpod.data.numbers import format_number, parse_number
from kpod.data.prompts import CHOICE_LETTERS
from kpod.data.records import Question, Rationale, read_jsonl
from kpod.distill.examples import encode_examples, rationale_key

# A number as written in a rationale: 1,234 / 12 / 2.5 / -47 (not part of a word or of a longer number; a comma
# after it is punctuation unless a digit follows; a minus only where no word or number precedes it, so "5-3" is 3).
NUMBER = re.compile(r"(?<![\w.,])[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d|,\d|\.\d)")


# ----------------------------------------------------------------------------- loss
def scott_loss(nll: torch.Tensor, weights: torch.Tensor, counterfactual: torch.Tensor, weight: float,
               normalization: str = "tokens") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_factual + weight * L_counterfactual, L_factual, L_counterfactual) over the N supervised tokens of a batch.

    nll, weights: (N,); counterfactual: (N,) bool, true for tokens of counterfactual examples (their answer
    sentence; the rationale before it is input). Each term is the normalised weighted mean over its own tokens, and
    0 when the batch has none of that kind.
    """
    factual = weighted_mean(nll, weights, normalization, mask=~counterfactual)
    counter = weighted_mean(nll, weights, normalization, mask=counterfactual)
    return factual + weight * counter, factual, counter


class ScottTrainer(TermLoggingTrainer):
    """counterfactual: (N,) bool per dataset example; answer_start: (N,) first answer-sentence token per example."""

    def __init__(self, *args, counterfactual: np.ndarray, counterfactual_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        if len(counterfactual) != len(self.train_dataset):
            raise ValueError(f"{len(counterfactual)} counterfactual flags for {len(self.train_dataset)} examples")
        self.counterfactual = torch.as_tensor(np.asarray(counterfactual, dtype=bool))
        self.answer_start = torch.tensor([e.answer_start for e in self.train_dataset.examples], dtype=torch.long)
        self.counterfactual_weight = counterfactual_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.count_tokens(inputs)
        index = inputs["index"].cpu()
        cf_rows = self.counterfactual[index]
        first = torch.where(cf_rows, self.answer_start[index], torch.zeros_like(index))
        inputs = hide_given_steps(inputs, first)
        tokens = supervised_tokens(model, inputs)
        loss, factual, counter = scott_loss(token_nll(tokens), tokens.weights, cf_rows.to(tokens.rows.device)[tokens.rows],
                                            self.counterfactual_weight, self.loss_normalization)
        self.record(loss_factual=factual, loss_counterfactual=counter)
        return (loss, None) if return_outputs else loss


# ----------------------------------------------------------------------------- counterfactual data
def perturb_number(answer: str, rng: np.random.Generator) -> str | None:
    """Another number near `answer`: a +- d with 1 <= d <= max(1, |a| / 2); non-negative answers stay non-negative."""
    value = parse_number(answer)
    if value is None:
        return None
    span = max(1, int(abs(value) // 2))
    delta = int(rng.integers(1, span + 1))
    new = value - delta if rng.random() < 0.5 and (value < 0 or value - delta >= 0) else value + delta
    return format_number(Fraction(new))


def perturb_choice(answer: str, choices: list[str], rng: np.random.Generator) -> str | None:
    """Another option's letter."""
    letters = [c for c in CHOICE_LETTERS[: len(choices)] if c != answer.upper()]
    return str(rng.choice(letters)) if letters else None


def perturbed_answer(question: Question, kind: str, seed: int) -> str | None:
    """The question's perturbed answer a' under `seed` (drawn per question, whatever the order questions come in);
    None when none can be drawn (a non-numeric answer)."""
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{question.id}".encode()))
    if kind == "choice":
        return perturb_choice(question.answer, question.choices or [], rng)
    return perturb_number(question.answer, rng)


def counterfactual_number_text(text: str, answer: str, new_answer: str) -> str | None:
    """`text` with every number equal in value to `answer` written as `new_answer`; None if there is none."""
    target = parse_number(answer)
    found = False

    def swap(m: re.Match) -> str:
        nonlocal found
        if parse_number(m.group(0).replace("\u2212", "-")) == target:
            found = True
            return new_answer
        return m.group(0)

    out = NUMBER.sub(swap, text)
    return out if found else None


def counterfactual_choice_text(text: str, answer: str, new_answer: str, choices: list[str]) -> str | None:
    """`text` with the chosen option's text (as a whole word, or its plural) and letter ("(b)") replaced by those of
    `new_answer`."""
    old_i, new_i = CHOICE_LETTERS.index(answer.upper()), CHOICE_LETTERS.index(new_answer)
    option = re.compile(rf"(?<!\w){re.escape(choices[old_i])}(e?s)?(?!\w)", flags=re.IGNORECASE)
    out, n_text = option.subn(lambda m: choices[new_i] + (m.group(1) or ""), text)
    out, n_letter = re.subn(rf"\(({answer.lower()}|{answer.upper()})\)", f"({new_answer.lower()})", out)
    return out if n_text + n_letter else None


def counterfactual_rationales(questions: dict[str, Question], rationales: list[Rationale], kind: str,
                              seed: int) -> tuple[dict[str, Question], list[Rationale], Counter]:
    """One perturbed answer per question, and each rationale edited to reach it (those that mention the answer)."""
    perturbed: dict[str, Question] = {}
    out, counts = [], Counter()
    for r in rationales:
        q = questions[r.id]
        if q.id not in perturbed:
            new = perturbed_answer(q, kind, seed)
            perturbed[q.id] = replace(q, answer=new) if new is not None else None
        cf_q = perturbed[q.id]
        if cf_q is None:
            counts["no_perturbed_answer"] += 1
            continue
        if kind == "choice":
            text = counterfactual_choice_text(r.rationale, q.answer, cf_q.answer, q.choices or [])
        else:
            text = counterfactual_number_text(r.rationale, q.answer, cf_q.answer)
        if text is None:
            counts["answer_not_in_rationale"] += 1
            continue
        out.append(replace(r, rationale=text, teacher=r.teacher + "+counterfactual", answer=cf_q.answer,
                           correct=False, meta={**r.meta, "counterfactual_of": rationale_key(r)}))
    counts["counterfactual_rationales"] = len(out)
    return {k: v for k, v in perturbed.items() if v is not None}, out, counts


def teacher_counterfactuals(questions: dict[str, Question], path: str) -> tuple[dict[str, Question], list[Rationale], Counter]:
    """The teacher's counterfactual rationales (`kpod teach`, rationalize.target 'perturbed') of the training
    questions, those that led the teacher to their perturbed answer, each question carrying that answer."""
    out, perturbed, counts = [], {}, Counter()
    for _, row in read_jsonl(path):
        r = Rationale.from_json(row)
        if (r.meta.get("rationalized") or {}).get("target") != "perturbed":
            raise ValueError(f"{path}: rationale {r.id} explains the gold answer, not a perturbed one "
                             "(write these with `kpod teach` and rationalize.target 'perturbed')")
        if r.id not in questions:
            counts["not_a_training_question"] += 1
        elif not r.correct:
            counts["teacher_missed_its_answer"] += 1
        elif perturbed.setdefault(r.id, r.gold) != r.gold:
            raise ValueError(f"{path}: question {r.id} has counterfactual rationales for two answers")
        else:
            out.append(replace(r, answer=r.gold, meta={**r.meta, "counterfactual_of": "teacher"}))
    counts["counterfactual_rationales"] = len(out)
    counts["training_questions_without_one"] = len(set(questions) - set(perturbed))
    return {k: replace(questions[k], answer=v) for k, v in perturbed.items()}, out, counts


def setup(ctx: MethodContext) -> TrainingSetup:
    cfg, d = ctx.cfg, ctx.cfg.data
    questions = {row["id"]: Question(**row) for _, row in read_jsonl(ctx.paths.data_dir / "train_questions.jsonl")}
    keys = {e.key for e in ctx.examples}
    rationales = [r for _, row in read_jsonl(ctx.paths.rationales)
                  if rationale_key(r := Rationale.from_json(row)) in keys]
    kind = d.answer_type if d.dataset == "custom" else answer_type(d.dataset)
    if cfg.baselines.scott.counterfactual_rationales:  # SCOTT's own: written by the teacher
        trained = {r.id: questions[r.id] for r in rationales}
        cf_questions, cf_rationales, counts = teacher_counterfactuals(trained, cfg.baselines.scott.counterfactual_rationales)
    else:
        cf_questions, cf_rationales, counts = counterfactual_rationales(questions, rationales, kind, cfg.seed)
    cf_examples, encode_report = encode_examples(
        ctx.tokenizer, cf_questions, cf_rationales, prompt_template=d.prompt_template,
        target_template=d.target_template, splitter=d.splitter, max_length=d.max_length, progress=False,
        answer_choice_text=d.answer_choice_text,
    )
    examples = ctx.examples + cf_examples
    flags = np.array([False] * len(ctx.examples) + [True] * len(cf_examples))
    report = {"factual_examples": len(ctx.examples), "counterfactual_examples": len(cf_examples),
              "counts": dict(counts), "counterfactual_encode": encode_report}
    return TrainingSetup(examples, ScottTrainer, report=report,
                         trainer_kwargs={"counterfactual": flags,
                                         "counterfactual_weight": cfg.baselines.scott.counterfactual_weight})


METHOD = MethodSpec("scott", "SCOTT", setup, settings=lambda cfg: cfg.baselines.scott,
                    source="Wang et al. 2023, SCOTT: Self-Consistent Chain-of-Thought Distillation (ACL)")
