"""Distillation training on the Hugging Face Trainer: only the loss and the batching are ours.

`DistillTrainer` overrides `compute_loss` with the token-weighted loss (Eq. 1 / Eq. 15) and batches examples of
similar length. Checkpoints, resume, optimiser, schedule and logging are the Trainer's.

Under `accelerate launch` the Trainer wraps the model (DDP, FSDP, DeepSpeed) and shards the batches: every process
draws the same order and takes every n-th batch of it (accelerate's `BatchSamplerShard`). The length-grouped order
is then drawn from (seed, epoch) alone, so all processes agree on it; an optimiser step sees
`batch_size x grad_accum x processes` examples (`train.global_batch_size` fixes that product).

    >>> trainer = build_trainer(model, tokenizer, dataset, cfg.train, output_dir, seed=0)
    >>> summary = run_training(trainer, output_dir)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import get_last_checkpoint

from kpod import distributed as dist
from kpod.config import TrainConfig
from kpod.distill.dataset import DistillDataset, PackingCollator, PadCollator
from kpod.distill.dropout import use_fast_lora_dropout
from kpod.distill.loss import backbone, causal_lm_loss, seq2seq_loss
from kpod.models import is_seq2seq


class SeededLengthGroupedSampler(Sampler):
    """Length-grouped order (as `LengthGroupedSampler`) drawn from (seed, epoch) alone: the same on every process,
    whatever each has done with its random state, so accelerate's batch sharding splits one order between them.

    batch_size: the global batch (per-device batch x grad_accum x processes), the group lengths are sorted within.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        self.batch_size, self.lengths, self.seed, self.epoch = batch_size, lengths, seed, 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class DistillTrainer(Trainer):
    """Trainer whose loss is the token-weighted CoT-distillation loss."""

    # compute_loss returns the mean over its micro-batch (it ignores num_items_in_batch), so the Trainer must
    # divide it by the accumulation steps; left to itself it would not, since the model's forward takes **kwargs.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_normalization: str = "tokens", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_normalization = loss_normalization
        self.tokens_seen = 0  # non-pad tokens through the model, for throughput
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._loss_fn = seq2seq_loss if is_seq2seq(base) else causal_lm_loss

    @property
    def examples_per_optimizer_step(self) -> int:
        """The global batch: examples per device x accumulation steps x processes (which share one seeded order)."""
        return self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # non-pad tokens: packed batches count their own, padded ones are counted by their attention mask
        self.tokens_seen += int(inputs["num_tokens"]) if "num_tokens" in inputs else int(inputs["attention_mask"].sum())
        if "decoder_input_ids" in inputs:
            self.tokens_seen += int((inputs["labels"] != -100).sum())
        loss = self._loss_fn(model, inputs, self.loss_normalization)
        return (loss, None) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(ds, DistillDataset):
            # Lengths are known without reading the items (KPOD changes labels, never lengths).
            if self.args.world_size > 1:  # one seeded order that accelerate splits between the processes
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                return SeededLengthGroupedSampler(self.examples_per_optimizer_step, ds.lengths, seed=seed)
            return LengthGroupedSampler(self.examples_per_optimizer_step, lengths=ds.lengths)
        return super()._get_train_sampler(train_dataset)


class EpochLog(TrainerCallback):
    """Wall time and memory of each epoch: the resident memory at its end (ours must not grow from epoch to epoch;
    a copy of the data per epoch would show here) and the process's peak so far."""

    def __init__(self):
        self.epochs: list[dict] = []
        self._start = time.time()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.time()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append({"epoch": round(state.epoch or 0, 3), "step": state.global_step,
                            "wall_s": round(time.time() - self._start, 1), "rss_mb": current_rss_mb(),
                            "peak_rss_mb": peak_rss_mb()})


def current_rss_mb() -> float | None:
    """Resident memory of this process now (Linux /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def logged_losses(trainer) -> list[dict]:
    """The training loss at every logging step, from the Trainer's log history (which a resumed run restores, so
    the curve starts at the first step, not at the resume)."""
    return [{"step": e["step"], "epoch": round(e.get("epoch") or 0, 3), "loss": e["loss"]}
            for e in trainer.state.log_history if "loss" in e]


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int, use_cpu: bool | None = None) -> TrainingArguments:
    """The Trainer's arguments; grad_accum follows `cfg.global_batch_size` over this run's processes."""
    if use_cpu is None:
        use_cpu = dist.use_cpu()
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.accumulation_steps(dist.world_size()),
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        report_to=[],
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        disable_tqdm=os.environ.get("KPOD_NO_PROGRESS") == "1",
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        # non-reentrant checkpointing: works with LoRA's frozen inputs and with DDP
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        # DDP: every trainable parameter (LoRA or full) takes part in each loss, so no search for unused ones
        ddp_find_unused_parameters=False,
    )
    if cfg.precision == "fp32":  # override a launcher's mixed precision (ACCELERATE_MIXED_PRECISION)
        args.mixed_precision = "no"
        if args.deepspeed_plugin is not None:  # which TrainingArguments already passed on to DeepSpeed's config
            for key in ("bf16", "fp16"):
                args.deepspeed_plugin.deepspeed_config.pop(key, None)
    return args


def build_trainer(model, tokenizer, dataset: DistillDataset, cfg: TrainConfig, output_dir: Path, seed: int,
                  trainer_cls=DistillTrainer, **trainer_kwargs) -> DistillTrainer:
    """A trainer of `trainer_cls` (DistillTrainer or a subclass; extra keyword arguments go to it)."""
    epochs = EpochLog()
    if cfg.packing:
        if dataset.seq2seq:
            raise ValueError("train.packing is for decoder-only students; set it false for seq2seq students")
        collator = PackingCollator(tokenizer.pad_token_id, cfg.packing_max_tokens)
    else:
        collator = PadCollator(tokenizer.pad_token_id)
    if cfg.fast_lora_dropout:
        use_fast_lora_dropout(model)
    if cfg.torch_compile:
        # The backbone, not the wrapper: the loss calls it directly (LM head only at supervised positions).
        # dynamic=True: batch widths vary from step to step, one graph serves them all.
        backbone(model).compile(dynamic=True)
    trainer = trainer_cls(
        model=model,
        args=training_arguments(cfg, output_dir, seed),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[epochs],
        loss_normalization=cfg.loss_normalization,
        **trainer_kwargs,
    )
    trainer.epoch_log = epochs
    return trainer


WALL_FILE = "kpod_train_wall_s.json"  # in each checkpoint: training seconds up to it, over every attempt


class WallClock(TrainerCallback):
    """Writes into each checkpoint the training time up to it, earlier attempts included, so that a resumed run
    reports what its training cost in all (a run's own clock starts again at every resume)."""

    def __init__(self, before: float):
        self.before, self.start = before, time.time()

    def total(self) -> float:
        return self.before + time.time() - self.start

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / WALL_FILE).write_text(json.dumps({"train_wall_s": round(self.total(), 1)}))


def run_training(trainer: DistillTrainer, output_dir: Path, final_dir: Path) -> dict:
    """Train (resuming from the newest checkpoint if there is one), save the final model, return a summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(output_dir)) if output_dir.exists() else None
    wall_file = Path(last) / WALL_FILE if last else None
    before = json.loads(wall_file.read_text())["train_wall_s"] if wall_file and wall_file.exists() else 0.0
    trainer.add_callback(WallClock(before))
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.time() - t0
    trainer.save_model(str(final_dir))  # every process takes part (FSDP/ZeRO-3 gather the weights); the main one writes
    steps_run = trainer.state.global_step - (int(Path(last).name.split("-")[-1]) if last else 0)
    tokens = sum(dist.gather([trainer.tokens_seen]))  # over all processes
    summary = {
        "resumed_from": Path(last).name if last else None,
        "global_steps": trainer.state.global_step,
        "steps_this_run": steps_run,
        "epochs": trainer.state.epoch,
        "train_wall_s": round(wall, 1),  # this attempt's
        "train_wall_s_all_attempts": round(before + wall, 1),  # earlier attempts up to the resumed checkpoint too
        "s_per_step": round(wall / max(1, steps_run), 3),
        "tokens_this_run": tokens,
        "train_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "final_train_loss": result.training_loss,
        "loss_curve": logged_losses(trainer),
        "epoch_log": trainer.epoch_log.epochs,
        "peak_rss_mb": peak_rss_mb(),
        "kpod_stages": getattr(trainer, "stage_log", None),
        "batch_size": trainer.args.per_device_train_batch_size,
        "grad_accum": trainer.args.gradient_accumulation_steps,
        "processes": trainer.args.world_size,
        "global_batch_size": trainer.examples_per_optimizer_step,
    }
    if trainer.is_world_process_zero():
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
