"""KPOD-ICL: KPOD's token-weighted loss with its schedule replaced by in-sample curriculum learning by sequence
completion (Jia et al., ACL 2023): within every target, the student first learns to complete only its end, given the
preceding target tokens as input, and the given prefix shrinks until it generates the whole target.

It is KPOD's given-prefix mechanism at token level and with one pace for all examples, with no step difficulty or
question diversity: at stage t example i gets its first floor((1 - g(t)) * R_i) rationale tokens as input without
loss (R_i = rationale tokens; the answer sentence is always generated), g(t) the linear pace of
`kpod.curricula.pacing` (everything generated from stage T on).

    kpod run configs/default.yaml --set train.method=kpod_icl
"""

from __future__ import annotations

import numpy as np
import torch

from kpod.baselines.registry import MethodContext, MethodSpec, TrainingSetup
from kpod.curricula.pacing import curriculum_pacing
from kpod.curriculum.stages import stage_coverage, steps_per_stage
from kpod.distill.kpod import StagedTrainer


def given_tokens_schedule(rationale_tokens: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """(S, N) tokens given as input per stage: floor((1 - g(t)) * R_i).

    rationale_tokens: (N,) R_i; fractions: (S,) g(t), the generated share of each rationale.
    """
    given = np.floor((1 - fractions[:, None]) * np.asarray(rationale_tokens)[None, :] + 1e-9)
    return given.astype(np.int64)


class GivenTokensTrainer(StagedTrainer):
    """given_tokens: (S, N) target tokens given per stage and example; stages past the last repeat it."""

    schedule_unit = "tokens"

    def __init__(self, *args, given_tokens: np.ndarray, steps_per_stage: int, **kwargs):
        super().__init__(*args, schedule=given_tokens, steps_per_stage=steps_per_stage, **kwargs)

    def first_supervised(self, index, entries):
        return torch.as_tensor(entries, dtype=torch.long)


def setup(ctx: MethodContext) -> TrainingSetup:
    fractions = curriculum_pacing(ctx.cfg)
    given = given_tokens_schedule(np.array([e.answer_start for e in ctx.examples]), fractions)
    steps = ctx.optimizer_steps(len(ctx.examples))
    per_stage = steps_per_stage(steps, len(fractions))
    report = {"curriculum": "in_sample", "fractions": fractions.round(4).tolist(), "steps_per_stage": per_stage,
              "mean_given_tokens": given.mean(axis=1).round(2).tolist(), "token_weights": ctx.token_weights is not None,
              **stage_coverage(steps, per_stage, [bool((stage == 0).all()) for stage in given], "kpod_icl")}
    return TrainingSetup(ctx.examples, GivenTokensTrainer, token_weights=ctx.token_weights, report=report,
                         trainer_kwargs={"given_tokens": given, "steps_per_stage": per_stage})


METHOD = MethodSpec(
    "kpod_icl", "KPOD-ICL", setup, uses_token_weights=True,
    settings=lambda cfg: {"kpod": cfg.kpod.fingerprint_fields(), "curricula": cfg.curricula.fingerprint_fields()},
    source="Jia et al. 2023, In-sample Curriculum Learning by Sequence Completion for Natural Language Generation (ACL)",
)
