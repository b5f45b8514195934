"""Curricula that replace KPOD's in-rationale progressive schedule (the paper's KPOD-ACL, KPOD-SPL, KPOD-ICL).

    acl  Adaptive CL (Kong et al. 2021): easiest examples first, scores adapted with the current loss  -> kpod_acl
    spl  self-paced learning (Wan et al. 2020): examples whose current loss is under a growing threshold -> kpod_spl
    icl  in-sample CL (Jia et al. 2023): complete the end of each target first, then more of it         -> kpod_icl

Each keeps KPOD's token-weighted loss (`kpod.token_weights`) and stage count (`kpod.stages`), and paces with
`curricula.start_fraction` / `curricula.full_stage`. Select one with `train.method: kpod_acl` (etc.);
`get_curriculum("acl")` gives its method spec. docs/methods.md describes each.
"""

from __future__ import annotations

CURRICULA: dict[str, str] = {"acl": "kpod_acl", "spl": "kpod_spl", "icl": "kpod_icl"}


def curriculum_names() -> list[str]:
    return list(CURRICULA)


def get_curriculum(name: str):
    """The `MethodSpec` of curriculum `name` (acl, spl, icl)."""
    from kpod.baselines.registry import get_method

    if name not in CURRICULA:
        raise ValueError(f"unknown curriculum {name!r}; known: {', '.join(CURRICULA)}")
    return get_method(CURRICULA[name])
