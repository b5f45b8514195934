"""The KPOD loss (Eq. 15) and trainer: given steps carry no loss, the rest is token-weighted, stages follow the
schedule and a resumed run continues in the same stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from kpod.config import TrainConfig
from kpod.data.datasets import load_split
from kpod.data.rationales import import_rationales
from kpod.distill.dataset import DistillDataset, PadCollator, hide_given_steps
from kpod.distill.examples import encode_examples
from kpod.distill.kpod import KpodTrainer
from kpod.distill.loss import causal_lm_loss
from kpod.distill.trainer import build_trainer, run_training
from kpod.models import build_tiny_model


@pytest.fixture(scope="module")
def multi_step_examples(smol_tokenizer):
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][:80]
    examples, _ = encode_examples(smol_tokenizer, questions, rationales, progress=False)
    return [e for e in examples if e.n_steps >= 3][:12]


def test_loss_is_the_weighted_nll_of_the_generated_steps_and_answer(multi_step_examples, smol_tokenizer):
    ex = multi_step_examples[0]
    w = np.random.RandomState(0).uniform(0.05, 1, ex.answer_start).astype(np.float32)
    ds = DistillDataset([ex], token_weights=[w])
    model = build_tiny_model("llama", smol_tokenizer, seed=2)
    c = 2
    batch = hide_given_steps(PadCollator(smol_tokenizer.pad_token_id)([ds[0]]), ds.first_supervised([0], [c]))
    loss = causal_lm_loss(model, batch, "tokens")

    # By hand: full logits; token j of the target is predicted at position n_prompt + j - 1.
    ids = torch.tensor([ex.prompt_ids + ex.target_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    n_prompt, start = len(ex.prompt_ids), ex.step_spans[c][0]
    terms = []
    for j in range(start, len(ex.target_ids)):
        weight = w[j] if j < ex.answer_start else 1.0  # rationale tokens weighted, answer and end token weigh 1
        terms.append(-weight * logp[n_prompt + j - 1, ex.target_ids[j]])
    expected = torch.stack(terms).sum() / len(terms)
    assert torch.allclose(loss, expected, atol=1e-5)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def _trainer(examples, tok, out, given, steps_per_stage, epochs=3):
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=1e-3, warmup_steps=0, save_steps=1, logging_steps=1)
    model = build_tiny_model("llama", tok, seed=0)
    return build_trainer(model, tok, DistillDataset(examples), cfg, out, seed=0, trainer_cls=KpodTrainer,
                         given_steps=given, steps_per_stage=steps_per_stage)


def test_stages_follow_the_schedule_and_resume_in_place(multi_step_examples, smol_tokenizer, tmp_path):
    n = len(multi_step_examples)  # 12 examples, batch 4 -> 3 steps per epoch, one stage per epoch
    last = np.array([e.n_steps - 1 for e in multi_step_examples])
    given = np.stack([last, np.maximum(last - 1, 0), np.zeros(n, dtype=int)])
    out = tmp_path / "train"
    summary = run_training(_trainer(multi_step_examples, smol_tokenizer, out, given, 3), out, tmp_path / "final")
    assert [(s["stage"], s["from_step"]) for s in summary["kpod_stages"]] == [(0, 0), (1, 3), (2, 6)]

    # A run interrupted after step 4 (inside stage 1) resumes inside stage 1.
    out = tmp_path / "interrupted"
    first = _trainer(multi_step_examples, smol_tokenizer, out, given, 3)
    first.add_callback(StopAt(4))
    run_training(first, out, tmp_path / "final2")
    assert first.state.global_step == 4
    resumed = run_training(_trainer(multi_step_examples, smol_tokenizer, out, given, 3), out, tmp_path / "final2")
    assert resumed["resumed_from"] == "checkpoint-4"
    assert [(s["stage"], s["from_step"]) for s in resumed["kpod_stages"]] == [(1, 4), (2, 6)]


def test_schedule_must_fit_the_dataset(multi_step_examples, smol_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        _trainer(multi_step_examples, smol_tokenizer, tmp_path, np.zeros((2, 3), dtype=int), 1)
