"""KPOD-ACL: KPOD's token-weighted loss with its in-rationale schedule replaced by Adaptive Curriculum Learning
(Kong et al., ICCV 2021): examples are ordered by a difficulty score that starts as the loss of a pre-trained model
(here the un-distilled student) and is adapted during training with the current model's loss.

At stage t the examples whose score, frozen at the stage start, lies among the easiest g(t) (linear pace, see
`kpod.curricula.pacing`) carry loss; after every step each example of the batch updates its score:
score = (1 - m) * score + m * current loss, m = `curricula.acl_momentum`.

    kpod run configs/default.yaml --set train.method=kpod_acl
"""

from __future__ import annotations

from kpod.baselines.registry import MethodContext, MethodSpec, TrainingSetup
from kpod.curricula.example_selection import ExampleSelector, example_curriculum_setup


def setup(ctx: MethodContext) -> TrainingSetup:
    selector = ExampleSelector("adaptive_cl", by_current_loss=False, momentum=ctx.cfg.curricula.acl_momentum)
    return example_curriculum_setup(ctx, selector)


METHOD = MethodSpec(
    "kpod_acl", "KPOD-ACL", setup, uses_token_weights=True,
    settings=lambda cfg: {"kpod": cfg.kpod.fingerprint_fields(), "curricula": cfg.curricula.fingerprint_fields()},
    source="Kong et al. 2021, Adaptive Curriculum Learning (ICCV)",
)
