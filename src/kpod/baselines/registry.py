"""Every training method by name (`train.method`): what its trainer is and how its training data is prepared.

The pipeline looks a method up here and asks it for a `TrainingSetup` (examples, trainer class, trainer keyword
arguments) just before training. Built-in methods are imported lazily from their module, so importing the registry
is cheap and a method's module is only loaded when it is used.

    >>> spec = get_method("mcc_kd")
    >>> setup = spec.setup(MethodContext(cfg, model, tokenizer, examples, None, None, paths, seq2seq=False))
    >>> trainer = build_trainer(model, tokenizer, DistillDataset(setup.examples), cfg.train, out, seed,
    ...                         trainer_cls=setup.trainer_cls, **setup.trainer_kwargs)

A new method: a module with a `METHOD = MethodSpec(...)`, a line in `_BUILTIN` (or `register_method(METHOD)`), and
its name in `kpod.config.TrainConfig.method`.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kpod import distributed as dist
from kpod.config import RunConfig
from kpod.distill.examples import EncodedExample
from kpod.paths import RunPaths


@dataclass
class MethodContext:
    """What a method may use to prepare its training: the run's config, the student before training (LoRA already
    added; its adapters start at zero, so it computes what the un-distilled student computes), the encoded examples,
    KPOD's token weights and schedule where the pipeline computed them, and the run's paths (artefacts on disk)."""

    cfg: RunConfig
    model: Any
    tokenizer: Any
    examples: list[EncodedExample]
    token_weights: list[np.ndarray] | None
    given_steps: np.ndarray | None
    paths: RunPaths
    seq2seq: bool = False

    def optimizer_steps(self, num_examples: int) -> int:
        """Optimiser steps of the whole run for `num_examples` examples (the Trainer's own count): each of the run's
        processes gets every n-th batch (accelerate evens them out), `accumulation_steps` of them per step."""
        t, world = self.cfg.train, dist.world_size()
        batches = math.ceil(math.ceil(num_examples / t.batch_size) / world)
        return math.ceil(math.ceil(batches / t.accumulation_steps(world)) * t.epochs)


@dataclass
class TrainingSetup:
    """What training runs on: the examples (possibly changed by the method), their token weights, the trainer."""

    examples: list[EncodedExample]
    trainer_cls: type
    trainer_kwargs: dict = field(default_factory=dict)
    token_weights: list[np.ndarray] | None = None
    report: dict = field(default_factory=dict)  # what the method did to the data; written to train/method.json


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str  # the row label in result tables, as the paper writes it
    setup: Callable[[MethodContext], TrainingSetup]
    # The settings that change what training does; part of the training stage's fingerprint.
    settings: Callable[[RunConfig], Any] = lambda cfg: None
    uses_token_weights: bool = False  # needs KPOD's token weighting stage (the curriculum variants)
    source: str = ""


# ----------------------------------------------------------------------------- the two reference methods
def _plain_setup(ctx: MethodContext) -> TrainingSetup:
    from kpod.distill.trainer import DistillTrainer

    return TrainingSetup(ctx.examples, DistillTrainer, token_weights=ctx.token_weights)


def _kpod_setup(ctx: MethodContext) -> TrainingSetup:
    from kpod.distill.kpod import KpodTrainer

    if ctx.given_steps is None:
        raise ValueError("kpod needs the schedule of given steps (the pipeline's schedule stage)")
    from kpod.curriculum.stages import stage_coverage, steps_per_stage

    steps = ctx.optimizer_steps(len(ctx.examples))
    per_stage = steps_per_stage(steps, len(ctx.given_steps))
    whole = [bool((stage == 0).all()) for stage in np.asarray(ctx.given_steps)]
    return TrainingSetup(
        ctx.examples, KpodTrainer, token_weights=ctx.token_weights,
        report=stage_coverage(steps, per_stage, whole, "kpod"),
        trainer_kwargs={"given_steps": ctx.given_steps, "steps_per_stage": per_stage},
    )


PLAIN = MethodSpec("plain", "plain CoT distillation", _plain_setup, source="Eq. 1 of the KPOD paper")
KPOD = MethodSpec("kpod", "KPOD", _kpod_setup, settings=lambda cfg: cfg.kpod, uses_token_weights=True,
                  source="Feng et al. 2024 (ICML)")

# name -> module defining METHOD (imported on first use)
_BUILTIN: dict[str, str] = {
    "scotd": "kpod.baselines.scotd",
    "specialized_kd": "kpod.baselines.specialized_kd",
    "scott": "kpod.baselines.scott",
    "mcc_kd": "kpod.baselines.mcc_kd",
    "kpod_acl": "kpod.curricula.adaptive",
    "kpod_spl": "kpod.curricula.self_paced",
    "kpod_icl": "kpod.curricula.in_sample",
}
_METHODS: dict[str, MethodSpec] = {"plain": PLAIN, "kpod": KPOD}


def trains_on_token_weights(cfg: RunConfig) -> bool:
    """Whether a run of `cfg` computes KPOD's token weights (its method uses them, and they are not switched off)."""
    return cfg.kpod.token_weights and get_method(cfg.train.method).uses_token_weights


def register_method(spec: MethodSpec) -> MethodSpec:
    _METHODS[spec.name] = spec
    return spec


def method_names() -> list[str]:
    return sorted(set(_METHODS) | set(_BUILTIN))


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS and name in _BUILTIN:
        register_method(importlib.import_module(_BUILTIN[name]).METHOD)
    if name not in _METHODS:
        raise ValueError(f"unknown training method {name!r}; known: {', '.join(method_names())}")
    return _METHODS[name]


def method_label(name: str) -> str:
    """Table label of a method (its name when it is not a known method)."""
    try:
        return get_method(name).label
    except (ValueError, ImportError):
        return name


def prepare_training(ctx: MethodContext) -> TrainingSetup:
    """The training setup of `ctx.cfg.train.method`; its data report (if any) goes to train/method.json."""
    setup = get_method(ctx.cfg.train.method).setup(ctx)
    if setup.report and dist.is_main():
        ctx.paths.train_dir.mkdir(parents=True, exist_ok=True)
        (ctx.paths.train_dir / "method.json").write_text(
            json.dumps({"method": ctx.cfg.train.method, **setup.report}, indent=1, default=str))
    return setup
