"""The CoT-distillation baselines the paper compares KPOD with, and the registry of every training method.

    scotd           SCoTD (Li et al. 2023): every sampled rationale of a question is an example
    specialized_kd  Specialized KD (Fu et al. 2023): zero-shot and in-context formats mixed
    scott           SCOTT (Wang et al. 2023): factual + counterfactual-reasoning loss
    mcc_kd          MCC-KD (Chen et al. 2023): answer consistency between rationales of one question

`train.method` names a method; `get_method(name)` gives its `MethodSpec` (the curriculum variants of
`kpod.curricula` and the reference `plain` and `kpod` are registered here too). docs/methods.md describes each.
"""

from kpod.baselines.registry import (
    MethodContext,
    MethodSpec,
    TrainingSetup,
    get_method,
    method_label,
    method_names,
    prepare_training,
    register_method,
)

__all__ = [
    "MethodContext", "MethodSpec", "TrainingSetup", "get_method", "method_label", "method_names",
    "prepare_training", "register_method",
]  # fmt: skip
