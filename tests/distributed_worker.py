"""Worker of tests/test_distributed.py: one `kpod run` of KPOD on a tiny student, as one process of several (under
`accelerate launch`) or alone, recording what each process trained on in OUT/rank-R.json: the schedule it used, the
example indices of every micro-batch with its stage, and the logged per-step losses.

    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml tests/distributed_worker.py CFG OUT
    python tests/distributed_worker.py CFG OUT            # the single-process reference
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from kpod import distributed as dist
from kpod.baselines import registry
from kpod.config import load_config
from kpod.distill.kpod import KpodTrainer
from kpod.distill.trainer import SeededLengthGroupedSampler, logged_losses
from kpod.pipeline import Pipeline

TRAINERS: list["RecordingKpodTrainer"] = []


class RecordingKpodTrainer(KpodTrainer):
    """KPOD's trainer, recording the stage and example indices of every micro-batch this process trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []
        TRAINERS.append(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = self.state.global_step
        self.seen.append({"step": step, "stage": self.stage_at(step), "index": inputs["index"].tolist()})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        # Alone, the Trainer would draw its length-grouped order from the global random state; the reference draws
        # the seeded order that several processes share, so that both runs see the same global batches.
        if self.args.world_size == 1 and self.args.train_sampling_strategy == "group_by_length":
            return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              self.train_dataset.lengths, seed=self.args.data_seed)
        return super()._get_train_sampler(train_dataset)


def _recording_setup(ctx):
    setup = registry.KPOD.setup(ctx)
    setup.trainer_cls = RecordingKpodTrainer
    return setup


def main(config: str, out: str) -> None:
    registry.register_method(dataclasses.replace(registry.KPOD, setup=_recording_setup))
    summary = Pipeline(load_config(config), progress=False).run()
    (trainer,) = TRAINERS
    record = {
        "rank": dist.rank(),
        "world_size": dist.world_size(),
        "grad_accum": trainer.args.gradient_accumulation_steps,
        "steps_per_stage": trainer.steps_per_stage,
        "max_steps": trainer.state.max_steps,
        "given_steps": trainer.schedule.tolist(),
        "seen": trainer.seen,
        "losses": logged_losses(trainer),
        "accuracy": [r["accuracy"] for r in summary["results"]],
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank-{dist.rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
