"""KPOD-SPL: KPOD's token-weighted loss with its in-rationale schedule replaced by self-paced learning: an example
carries loss only while its current loss is below a threshold lambda(t) that grows stage by stage (Kumar et al. 2010;
applied to sequence generation by Wan et al., EMNLP 2020, the SPL the KPOD paper compares with).

lambda(t) is set at each stage start so that the easiest g(t) of the examples' latest losses lie below it (linear
pace, `kpod.curricula.pacing`; everything from stage T on); within the stage an example is selected when its loss in
the current forward pass is at most lambda(t). Each example's latest loss is updated whenever it is seen. Wan et
al. weight sentences by a model-confidence score (Monte-Carlo dropout) instead of a hard 0/1 selection; see
docs/methods.md.

    kpod run configs/default.yaml --set train.method=kpod_spl
"""

from __future__ import annotations

from kpod.baselines.registry import MethodContext, MethodSpec, TrainingSetup
from kpod.curricula.example_selection import ExampleSelector, example_curriculum_setup


def setup(ctx: MethodContext) -> TrainingSetup:
    return example_curriculum_setup(ctx, ExampleSelector("self_paced", by_current_loss=True, momentum=1.0))


METHOD = MethodSpec(
    "kpod_spl", "KPOD-SPL", setup, uses_token_weights=True,
    settings=lambda cfg: {"kpod": cfg.kpod.fingerprint_fields(), "curricula": cfg.curricula.fingerprint_fields()},
    source="Wan et al. 2020, Self-Paced Learning for Neural Machine Translation (EMNLP); Kumar et al. 2010",
)
