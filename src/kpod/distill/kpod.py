"""KPOD training (paper Eq. 15): the distillation trainer with the progressive schedule applied per step.

At stage t, example i gets its first c_i(t) steps as teacher-forced input without loss and is supervised on the
remaining steps (each token weighted by w_j, which the dataset carries) plus the answer sentence. A stage lasts
`steps_per_stage` optimiser steps (by default one epoch, as in the paper). The stage is derived from the global
step inside `compute_loss`, so a prefetched batch never uses a stale stage and a run resumed from a checkpoint
continues in the same stage with the same schedule. The encoded dataset is never copied or rebuilt.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from kpod.distill.dataset import hide_given_steps
from kpod.distill.trainer import DistillTrainer

log = logging.getLogger(__name__)


class StagedTrainer(DistillTrainer):
    """A trainer whose target prefix given as input (without loss) follows a per-stage schedule.

    schedule: (num_stages, N) int array, one row per stage (stages past the last repeat it); a stage lasts
    `steps_per_stage` optimiser steps. Subclasses say what a schedule entry counts (`first_supervised`).
    """

    schedule_unit = "steps"  # what the schedule counts, for the stage log

    def __init__(self, *args, schedule: np.ndarray, steps_per_stage: int, **kwargs):
        super().__init__(*args, **kwargs)
        if schedule.ndim != 2 or schedule.shape[1] != len(self.train_dataset):
            raise ValueError(f"schedule shape {schedule.shape} does not fit {len(self.train_dataset)} examples")
        if steps_per_stage < 1:
            raise ValueError(f"steps_per_stage must be >= 1, got {steps_per_stage}")
        self.schedule = np.asarray(schedule, dtype=np.int64)
        self.steps_per_stage = steps_per_stage
        self.stage_log: list[dict] = []

    def stage_at(self, global_step: int) -> int:
        return min(global_step // self.steps_per_stage, len(self.schedule) - 1)

    def first_supervised(self, index: np.ndarray, entries: np.ndarray) -> torch.Tensor:
        """(B,) index into each target of the first supervised token, from the rows' schedule entries."""
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        t = self.stage_at(self.state.global_step)
        if not self.stage_log or self.stage_log[-1]["stage"] != t:
            mean = float(self.schedule[t].mean())
            self.stage_log.append({"stage": t, "from_step": self.state.global_step,
                                   f"mean_given_{self.schedule_unit}": round(mean, 2)})
            log.info("stage %d from step %d: mean given %s %.2f", t, self.state.global_step, self.schedule_unit, mean)
        index = inputs["index"].cpu().numpy()
        first = self.first_supervised(index, self.schedule[t, index])
        inputs = hide_given_steps(inputs, first.to(inputs["labels"].device))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class KpodTrainer(StagedTrainer):
    """given_steps: (num_stages, N) int array, c_i(t) per stage: the first c_i(t) rationale steps are given."""

    def __init__(self, *args, given_steps: np.ndarray, steps_per_stage: int, **kwargs):
        super().__init__(*args, schedule=given_steps, steps_per_stage=steps_per_stage, **kwargs)

    def first_supervised(self, index, entries):
        return self.train_dataset.first_supervised(index, entries)
