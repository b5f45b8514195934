"""Specialized KD (Fu et al., ICML 2023, "Specializing Smaller Language Models towards Multi-Step Reasoning"):
CoT distillation specialised to multi-step math, trained on a mixture of data formats so the student keeps both
its zero-shot and its in-context ability.

Each training example is given one of four formats (seeded, fixed for the run):

    zero-shot CoT      [question prompt]                                   -> rationale + answer (= plain)
    in-context CoT     [demo 1][demo 2]...[question prompt]                -> rationale + answer
    zero-shot answer   [question prompt]                                   -> answer sentence only
    in-context answer  [demo 1 (answer only)]...[question prompt]          -> answer sentence only

A demonstration is another training question with its rationale and answer (token ids of its prompt and target,
without the end token, then a blank line). Only the example's own target is supervised; demonstrations are context.
`baselines.specialized_kd.in_context_fraction` and `answer_only_fraction` set the mixture. Fu et al. matched the
teacher's token distributions (top-5 log-probabilities from the API); the released rationales are text only, so this
is their sample-matching variant (the plain CoT loss). See docs/methods.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from kpod.baselines.registry import MethodContext, MethodSpec, TrainingSetup
from kpod.config import SpecializedKdSettings
from kpod.distill.examples import EncodedExample
from kpod.distill.trainer import DistillTrainer

SEPARATOR = "\n\n"


def answer_only(ex: EncodedExample) -> EncodedExample:
    """The example with the answer sentence (and end token) as its whole target; no rationale steps."""
    return replace(ex, key=ex.key + "#answer", target_ids=ex.target_ids[ex.answer_start:], step_spans=[],
                   answer_start=0)


def _leading_specials(ids: list[int], special_ids: frozenset[int]) -> int:
    n = 0
    while n < len(ids) and ids[n] in special_ids:
        n += 1
    return n


def _strip(ids: list[int], special_ids: frozenset[int]) -> list[int]:
    start, end = _leading_specials(ids, special_ids), len(ids)
    while end > start and ids[end - 1] in special_ids:
        end -= 1
    return list(ids[start:end])


def with_demonstrations(ex: EncodedExample, demos: list[EncodedExample], separator_ids: list[int],
                        special_ids: frozenset[int] = frozenset()) -> EncodedExample:
    """The example with `demos` (prompt + target without its end token + separator, each) before its prompt. Special
    tokens at either end of a demonstration's prompt or target (`special_ids`: a BOS, T5's "</s>") are left out, and
    the example's own leading ones go first, so that the sequence starts as a single prompt would."""
    lead = _leading_specials(ex.prompt_ids, special_ids)
    prefix: list[int] = list(ex.prompt_ids[:lead])
    for d in demos:
        prefix += _strip(d.prompt_ids, special_ids) + _strip(d.target_ids[:-1], special_ids) + separator_ids
    return replace(ex, key=ex.key + f"#icl{len(demos)}", prompt_ids=prefix + ex.prompt_ids[lead:])


def pick_demonstrations(i: int, examples: list[EncodedExample], k: int, rng: np.random.Generator) -> list[int]:
    """Indices of up to k examples of other questions than example i, drawn without replacement."""
    own = examples[i].question_id
    out: list[int] = []
    for j in rng.permutation(len(examples)):
        if examples[j].question_id != own:
            out.append(int(j))
            if len(out) == k:
                break
    return out


def mix_formats(examples: list[EncodedExample], settings: SpecializedKdSettings, separator_ids: list[int],
                seed: int, special_ids: frozenset[int] = frozenset()) -> tuple[list[EncodedExample], dict]:
    """One example per input example, each in its drawn format; a report of the format counts. special_ids: the
    tokenizer's special tokens, left out at the ends of each demonstration (`with_demonstrations`)."""
    rng = np.random.default_rng(seed)
    in_context = rng.random(len(examples)) < settings.in_context_fraction
    answer = rng.random(len(examples)) < settings.answer_only_fraction
    formats: Counter = Counter()
    demos_used: list[int] = []
    out = []
    for i, ex in enumerate(examples):
        target = answer_only(ex) if answer[i] else ex
        kind = "answer" if answer[i] else "cot"
        if in_context[i]:
            picked = [examples[j] for j in pick_demonstrations(i, examples, settings.demonstrations, rng)]
            if answer[i]:
                picked = [answer_only(d) for d in picked]
            # Drop demonstrations (last first) until the example fits.
            while picked and len(with_demonstrations(target, picked, separator_ids, special_ids)) > settings.max_length:
                picked.pop()
            if picked:
                target = with_demonstrations(target, picked, separator_ids, special_ids)
                demos_used.append(len(picked))
                formats[f"in_context_{kind}"] += 1
            else:
                formats[f"in_context_{kind}_fell_back_to_zero_shot"] += 1
        else:
            formats[f"zero_shot_{kind}"] += 1
        out.append(target)
    report = {"formats": dict(sorted(formats.items())),
              "mean_demonstrations": round(float(np.mean(demos_used)), 2) if demos_used else 0.0,
              "mean_tokens": round(float(np.mean([len(e) for e in out])), 1)}
    return out, report


def setup(ctx: MethodContext) -> TrainingSetup:
    settings = ctx.cfg.baselines.specialized_kd
    separator_ids = list(ctx.tokenizer(SEPARATOR, add_special_tokens=False).input_ids)
    if len({e.question_id for e in ctx.examples}) < 2 and settings.in_context_fraction > 0:
        raise ValueError("specialized_kd: in-context demonstrations need at least two training questions")
    examples, report = mix_formats(ctx.examples, settings, separator_ids, ctx.cfg.seed,
                                   frozenset(ctx.tokenizer.all_special_ids))
    return TrainingSetup(examples, DistillTrainer, report=report)


METHOD = MethodSpec(
    "specialized_kd", "Specialized KD", setup, settings=lambda cfg: cfg.baselines.specialized_kd,
    source="Fu et al. 2023, Specializing Smaller Language Models towards Multi-Step Reasoning (ICML)",
)
