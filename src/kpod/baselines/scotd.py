"""SCoTD, symbolic chain-of-thought distillation (Li et al., ACL 2023): the student learns from many sampled
rationales per question; every kept rationale is one training example under the plain CoT loss (Eq. 1).

The method is in the data: run it with `data.rationales_per_question: null` (all kept rationales) on a source that
has several per question (the GPT-3.5 release has 3 per SVAMP/ASDiv question, the LLaMA-3 release up to 2 per GSM8K
question). SCoTD sampled 30 per question from its teacher; fewer here, see docs/methods.md.

    kpod run configs/quick.yaml --set train.method=scotd --set data.rationales_per_question=null
"""

from __future__ import annotations

from collections import Counter

from kpod.baselines.registry import MethodContext, MethodSpec, TrainingSetup
from kpod.distill.trainer import DistillTrainer


def rationales_per_question(examples) -> Counter:
    """{number of rationales: number of questions with that many}."""
    return Counter(Counter(e.question_id for e in examples).values())


def setup(ctx: MethodContext) -> TrainingSetup:
    counts = rationales_per_question(ctx.examples)
    if max(counts, default=0) < 2:
        raise ValueError("scotd: every question has a single rationale; SCoTD distils several sampled rationales per "
                         "question (use a source with several, and data.rationales_per_question: null)")
    report = {"examples": len(ctx.examples), "questions": sum(counts.values()),
              "questions_by_rationale_count": dict(sorted(counts.items()))}
    return TrainingSetup(ctx.examples, DistillTrainer, report=report)


METHOD = MethodSpec("scotd", "SCoTD", setup, source="Li et al. 2023, Symbolic Chain-of-Thought Distillation (ACL)")
