"""Example-level curricula (Adaptive CL, SPL) in place of KPOD's in-rationale schedule: at each stage only some
examples carry loss, chosen from a per-example difficulty score, and the chosen share grows with the stages.

Every example still goes through the model every epoch; the ones not selected get weight 0. That forward pass is
how the self-paced methods see every example's current loss (SPL selects by it; Adaptive CL updates its scores with
it), and it keeps the step count and the data order those of the other methods. The loss of a batch is KPOD's
token-weighted loss over the selected examples' tokens.

State (scores, the scores frozen at the current stage's start, the stage log) goes into every checkpoint
(`curriculum_state.json`), so a resumed run selects exactly as the uninterrupted one would. Under several processes
each one updates the scores with every process's batch losses, so all hold the same scores (as one process would).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kpod import distributed as dist
from kpod.baselines.common import TermLoggingTrainer, row_sums, supervised_tokens, token_nll, weighted_mean
from kpod.baselines.registry import MethodContext, TrainingSetup
from kpod.curricula.pacing import curriculum_pacing, kth_smallest
from kpod.curriculum.stages import stage_coverage, steps_per_stage
from kpod.distill.dataset import DistillDataset, PadCollator

log = logging.getLogger(__name__)
STATE_FILE = "curriculum_state.json"


@dataclass(frozen=True)
class ExampleSelector:
    """How a curriculum selects and re-scores examples.

    by_current_loss: select when the current loss is at most the stage threshold (SPL); otherwise select when the
    score frozen at the stage start is (Adaptive CL). momentum: new score = (1 - m) * score + m * current loss.
    """

    name: str
    by_current_loss: bool
    momentum: float

    def select(self, stage_scores: np.ndarray, threshold: float, index: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """(B,) bool for the batch rows `index` (B,) with current mean token losses `losses` (B,)."""
        if threshold == np.inf:
            return np.ones(len(index), dtype=bool)
        return (losses if self.by_current_loss else stage_scores[index]) <= threshold

    def update(self, scores: np.ndarray, index: np.ndarray, losses: np.ndarray) -> None:
        scores[index] = (1 - self.momentum) * scores[index] + self.momentum * losses


@torch.no_grad()
def example_losses(model, tokenizer, examples, batch_size: int = 16, seq2seq: bool = False,
                   progress: bool = False) -> np.ndarray:
    """Mean token NLL of each example's target under `model`: (N,). Runs where the model is (CPU or GPU)."""
    model.eval()
    device = next(model.parameters()).device
    ds = DistillDataset(examples, seq2seq=seq2seq,
                        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None))
    collate = PadCollator(tokenizer.pad_token_id)
    order = sorted(range(len(examples)), key=lambda i: ds.lengths[i])  # little padding
    out = np.zeros(len(examples))
    for b in tqdm(range(0, len(order), batch_size), desc="example losses", disable=not progress, mininterval=2):
        idx = order[b: b + batch_size]
        batch = {k: v.to(device) for k, v in collate([ds[i] for i in idx]).items()}
        tokens = supervised_tokens(model, batch)
        nll = token_nll(tokens)
        sums = row_sums(nll, tokens.rows, len(idx))
        counts = row_sums(torch.ones_like(nll), tokens.rows, len(idx)).clamp_min(1)
        out[idx] = (sums / counts).cpu().numpy()
    return out


class ExampleCurriculumTrainer(TermLoggingTrainer):
    """initial_scores: (N,) difficulty of each example before training; fractions: (S,) share selected per stage."""

    def __init__(self, *args, selector: ExampleSelector, initial_scores: np.ndarray, fractions: np.ndarray,
                 steps_per_stage: int, **kwargs):
        super().__init__(*args, **kwargs)
        if len(initial_scores) != len(self.train_dataset):
            raise ValueError(f"{len(initial_scores)} scores for {len(self.train_dataset)} examples")
        self.selector = selector
        self.scores = np.asarray(initial_scores, dtype=np.float64).copy()
        self.fractions = np.asarray(fractions, dtype=np.float64)
        self.steps_per_stage = steps_per_stage
        self.stage = -1
        self.stage_scores = self.scores.copy()
        self.threshold = np.inf
        self.stage_log: list[dict] = []

    def stage_at(self, global_step: int) -> int:
        return min(global_step // self.steps_per_stage, len(self.fractions) - 1)

    def _begin_stage(self, stage: int) -> None:
        if stage != self.stage:  # a resumed run already has this stage's frozen scores
            self.stage, self.stage_scores = stage, self.scores.copy()
        self.threshold = kth_smallest(self.stage_scores, float(self.fractions[stage]))
        self.stage_log.append({"stage": stage, "from_step": self.state.global_step,
                               "fraction": round(float(self.fractions[stage]), 4),
                               "threshold": None if self.threshold == np.inf else round(self.threshold, 4),
                               "mean_score": round(float(self.scores.mean()), 4)})
        log.info("%s stage %d from step %d: fraction %.2f, threshold %s", self.selector.name, stage,
                 self.state.global_step, self.fractions[stage], self.stage_log[-1]["threshold"])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.count_tokens(inputs)
        t = self.stage_at(self.state.global_step)
        if not self.stage_log or self.stage_log[-1]["stage"] != t:
            self._begin_stage(t)
        tokens = supervised_tokens(model, inputs)
        nll = token_nll(tokens)
        index = inputs["index"].cpu().numpy()
        n_rows = len(index)
        counts = row_sums(torch.ones_like(nll), tokens.rows, n_rows).clamp_min(1)
        losses = (row_sums(nll.detach(), tokens.rows, n_rows) / counts).cpu().numpy()
        keep = self.selector.select(self.stage_scores, self.threshold, index, losses)
        keep_tokens = torch.as_tensor(keep, device=tokens.rows.device)[tokens.rows]
        loss = weighted_mean(nll, tokens.weights, self.loss_normalization, mask=keep_tokens)
        if model.training:
            self.selector.update(self.scores, *gathered_losses(index, losses))
        # The logged loss is the objective (0 for a batch with nothing selected); this is every example's mean loss.
        self.record(selected_share=float(keep.mean()), loss_all_examples=float(losses.mean()))
        return (loss, None) if return_outputs else loss

    # ------------------------------------------------------------------ exact resume
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if folder.exists() and self.is_world_process_zero():  # every process holds the same state
            folder.joinpath(STATE_FILE).write_text(json.dumps({
                "scores": self.scores.tolist(), "stage": self.stage, "stage_scores": self.stage_scores.tolist(),
                "stage_log": self.stage_log}))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, str) and (Path(resume_from_checkpoint) / STATE_FILE).exists():
            state = json.loads((Path(resume_from_checkpoint) / STATE_FILE).read_text())
            self.scores = np.asarray(state["scores"], dtype=np.float64)
            self.stage, self.stage_scores = state["stage"], np.asarray(state["stage_scores"], dtype=np.float64)
            self.stage_log = state["stage_log"]
            if self.stage >= 0:
                self.threshold = kth_smallest(self.stage_scores, float(self.fractions[self.stage]))
        return super().train(resume_from_checkpoint, *args, **kwargs)


def gathered_losses(index: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every process's batch rows and losses of this step, in process order (this process's alone without others)."""
    if dist.world_size() == 1:
        return index, losses
    parts = dist.gather([(np.asarray(index).tolist(), np.asarray(losses).tolist())])
    return (np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in parts]),
            np.concatenate([np.asarray(v, dtype=np.float64) for _, v in parts]))


# ----------------------------------------------------------------------------- setup shared by ACL and SPL
def targets_digest(examples) -> str:
    """What the initial losses depend on besides the student: every example's prompt and target ids."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.key, list(e.prompt_ids), list(e.target_ids)]).encode())
    return h.hexdigest()[:16]


def initial_scores(ctx: MethodContext) -> np.ndarray:
    """Mean token NLL of every example under the un-distilled student (cached in curriculum/initial_losses.json, and
    recomputed when the student or any prompt or target changed; each process scores a share of the examples)."""
    path = ctx.paths.curriculum_dir / "initial_losses.json"
    student, digest = ctx.cfg.student.name, targets_digest(ctx.examples)
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("student") == student and cached.get("targets") == digest:
            return np.array([cached["losses"][e.key] for e in ctx.examples])
    model = ctx.model.to(dist.device())  # on a GPU machine the scoring runs there (as step difficulty does)
    losses = np.asarray(dist.map_sharded(
        lambda part: example_losses(model, ctx.tokenizer, part, ctx.cfg.curricula.scoring_batch_size,
                                    seq2seq=ctx.seq2seq).tolist(), ctx.examples))
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"student": student, "targets": digest,
                                    "losses": {e.key: round(float(v), 6) for e, v in zip(ctx.examples, losses)}}))
    return losses


def example_curriculum_setup(ctx: MethodContext, selector: ExampleSelector) -> TrainingSetup:
    scores = initial_scores(ctx)
    fractions = curriculum_pacing(ctx.cfg)
    steps = ctx.optimizer_steps(len(ctx.examples))
    per_stage = steps_per_stage(steps, len(fractions))
    report = {"curriculum": selector.name, "fractions": fractions.round(4).tolist(), "steps_per_stage": per_stage,
              "initial_score_mean": round(float(scores.mean()), 4), "token_weights": ctx.token_weights is not None,
              **stage_coverage(steps, per_stage, [bool(f >= 1) for f in fractions], selector.name,
                               what="selects every example", key="every_example_trained")}
    return TrainingSetup(ctx.examples, ExampleCurriculumTrainer, token_weights=ctx.token_weights, report=report,
                         trainer_kwargs={"selector": selector, "initial_scores": scores, "fractions": fractions,
                                         "steps_per_stage": per_stage})
