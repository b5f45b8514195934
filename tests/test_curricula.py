"""The curricula that replace KPOD's schedule: pacing, selection rules, the two trainers on a tiny student (with an
exact resume for the stateful one), and `kpod run` with each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import TrainerCallback

from kpod.distill.dataset import hide_given_steps
from kpod.cli import main
from kpod.config import TrainConfig
from kpod.curricula import curriculum_names, get_curriculum
from kpod.curricula.example_selection import ExampleCurriculumTrainer, ExampleSelector, example_losses
from kpod.curricula.in_sample import GivenTokensTrainer, given_tokens_schedule
from kpod.curricula.pacing import kth_smallest, linear_pacing
from kpod.curriculum.difficulty import target_token_nll
from kpod.data.datasets import load_split
from kpod.data.rationales import import_rationales
from kpod.distill.dataset import DistillDataset, PadCollator
from kpod.distill.examples import EncodedExample, encode_examples
from kpod.distill.loss import causal_lm_loss
from kpod.distill.trainer import build_trainer, run_training
from kpod.models import build_tiny_model

ACL = ExampleSelector("adaptive_cl", by_current_loss=False, momentum=0.0)
SPL = ExampleSelector("self_paced", by_current_loss=True, momentum=1.0)


@pytest.fixture(scope="module")
def examples(smol_tokenizer):
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][:8]
    return encode_examples(smol_tokenizer, questions, rationales, progress=False)[0]


@pytest.fixture(scope="module")
def short_examples(smol_tokenizer):
    """8 random examples of 8 prompt and 16 target tokens (2 steps, then a 4-token answer): cheap training steps."""
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(100, 5000, n).tolist()  # noqa: E731
    return [EncodedExample(f"q{i}#t#0", f"q{i}", ids(8), ids(15) + [smol_tokenizer.eos_token_id], [(0, 6), (6, 12)], 12)
            for i in range(8)]


# ----------------------------------------------------------------------------- pacing and selection rules
def test_linear_pacing_and_thresholds():
    assert linear_pacing(5, 0.2, 2).tolist() == pytest.approx([0.2, 0.6, 1.0, 1.0, 1.0])
    assert linear_pacing(1, 0.3, 1).tolist() == [0.3]
    with pytest.raises(ValueError):
        linear_pacing(3, 0.0, 1)
    values = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    assert kth_smallest(values, 0.4) == 2.0 and kth_smallest(values, 0.01) == 1.0 and kth_smallest(values, 1.0) == np.inf


def test_acl_selects_by_frozen_scores_and_spl_by_current_loss():
    stage_scores = np.array([1.0, 5.0, 2.0, 9.0])
    index, losses = np.array([0, 1, 3]), np.array([9.0, 0.5, 1.5])
    assert ACL.select(stage_scores, 2.0, index, losses).tolist() == [True, False, False]
    assert SPL.select(stage_scores, 2.0, index, losses).tolist() == [False, True, True]
    assert SPL.select(stage_scores, np.inf, index, losses).all()
    scores = stage_scores.copy()
    ExampleSelector("acl", False, momentum=0.25).update(scores, index, losses)
    assert scores.tolist() == pytest.approx([0.75 * 1 + 0.25 * 9, 0.75 * 5 + 0.25 * 0.5, 2.0, 0.75 * 9 + 0.25 * 1.5])


def test_in_sample_schedule_gives_a_shrinking_prefix_of_each_rationale():
    given = given_tokens_schedule(np.array([10, 3, 0]), linear_pacing(4, 0.3, 2))
    assert given.tolist() == [[7, 2, 0], [3, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert np.all(np.diff(given, axis=0) <= 0)


def test_example_losses_are_mean_target_nll(examples, smol_tokenizer):
    model = build_tiny_model("llama", smol_tokenizer, seed=4)
    got = example_losses(model, smol_tokenizer, examples[:5], batch_size=2)
    want = [n.mean() for n in target_token_nll(model, smol_tokenizer, examples[:5], batch_size=5, progress=False)]
    assert got == pytest.approx(want, rel=1e-4)


# ----------------------------------------------------------------------------- trainers
class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def _trainer(cls, examples, tok, out, epochs=2, save_steps=100, **kwargs):
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=3e-3, warmup_steps=0, save_steps=save_steps, logging_steps=1,
                      group_by_length=False)
    return build_trainer(build_tiny_model("llama", tok, seed=0), tok, DistillDataset(examples), cfg, out, seed=0,
                         trainer_cls=cls, **kwargs)


def test_acl_trains_only_the_easiest_share_in_early_stages(short_examples, smol_tokenizer, tmp_path):
    scores = np.arange(8, dtype=float)  # example i has difficulty i; momentum 0 keeps it
    trainer = _trainer(ExampleCurriculumTrainer, short_examples, smol_tokenizer, tmp_path, selector=ACL,
                       initial_scores=scores, fractions=np.array([0.25, 1.0]), steps_per_stage=2)
    run_training(trainer, tmp_path, tmp_path / "final")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    assert sum(h["selected_share"] * 4 for h in logs[:2]) == pytest.approx(2)  # examples 0 and 1 only
    assert all(h["selected_share"] == 1 for h in logs[2:])
    assert all(h["loss"] == 0 for h in logs[:2] if h["selected_share"] == 0)
    assert [(s["stage"], s["from_step"], s["threshold"]) for s in trainer.stage_log] == [(0, 0, 1.0), (1, 2, None)]


def test_spl_resumes_with_the_same_scores_and_stages(short_examples, smol_tokenizer, tmp_path):
    kwargs = dict(selector=SPL, initial_scores=np.linspace(9, 11, 8), fractions=np.array([0.5, 0.75, 1.0]),
                  steps_per_stage=1)
    full = _trainer(ExampleCurriculumTrainer, short_examples, smol_tokenizer, tmp_path / "a", **kwargs)
    run_training(full, tmp_path / "a", tmp_path / "a" / "final")
    first = _trainer(ExampleCurriculumTrainer, short_examples, smol_tokenizer, tmp_path / "b", save_steps=2, **kwargs)
    first.add_callback(StopAt(2))  # stopped inside stage 1 (steps 1-2), with a checkpoint at step 2
    run_training(first, tmp_path / "b", tmp_path / "b" / "final")
    resumed = _trainer(ExampleCurriculumTrainer, short_examples, smol_tokenizer, tmp_path / "b", **kwargs)
    summary = run_training(resumed, tmp_path / "b", tmp_path / "b" / "final")
    assert summary["resumed_from"] == "checkpoint-2"
    assert resumed.scores == pytest.approx(full.scores, rel=1e-5)
    assert [s["stage"] for s in resumed.stage_log] == [0, 1, 2] == [s["stage"] for s in full.stage_log]
    assert resumed.stage_log[1]["threshold"] == pytest.approx(full.stage_log[1]["threshold"])
    assert not np.allclose(full.scores, np.linspace(9, 11, 8))  # scores follow the training losses


def test_in_sample_trainer_hides_the_scheduled_prefix(short_examples, smol_tokenizer, tmp_path):
    given = given_tokens_schedule(np.array([e.answer_start for e in short_examples]), np.array([0.5, 1.0]))
    assert given[0].tolist() == [6] * 8
    trainer = _trainer(GivenTokensTrainer, short_examples, smol_tokenizer, tmp_path, given_tokens=given,
                       steps_per_stage=2)
    batch = PadCollator(smol_tokenizer.pad_token_id)([trainer.train_dataset[i] for i in (0, 3)])
    got = trainer.compute_loss(trainer.model, batch)
    want = causal_lm_loss(trainer.model, hide_given_steps(batch, torch.as_tensor(given[0, [0, 3]])))
    assert torch.allclose(got, want) and not torch.allclose(got, causal_lm_loss(trainer.model, batch))
    trainer.stage_log.clear()
    summary = run_training(trainer, tmp_path, tmp_path / "final")
    assert [(s["stage"], s["from_step"]) for s in summary["kpod_stages"]] == [(0, 0), (1, 2)]
    assert summary["kpod_stages"][1]["mean_given_tokens"] == 0


# ----------------------------------------------------------------------------- kpod run
@pytest.mark.parametrize("name,weights,epochs", [("acl", True, 2), ("spl", False, 2), ("icl", False, 2), ("spl", False, 1)])
def test_kpod_run_with_a_curriculum(name, weights, epochs, tmp_path, tiny_llama_dir):
    method = get_curriculum(name).name
    cfg = {
        "name": "tiny", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "svamp", "max_train_questions": 4},
        "student": {"name": str(tiny_llama_dir), "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
        "train": {"method": method, "epochs": epochs, "batch_size": 2, "save_steps": 50, "warmup_steps": 0, "lr": 1e-3},
        "eval": {"max_examples": 1, "max_new_tokens": 4, "batch_size": 1},
        "kpod": {"token_weights": weights, "weighting": {"max_steps": 2, "batch_size": 4, "hidden_size": 16,
                                                         "mlp_hidden_size": 16}},
        "curricula": {"start_fraction": 0.5},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    run = tmp_path / "run"
    stages = json.loads((run / "stages.json").read_text())
    assert ("weigh" in stages) == weights and "schedule" not in stages
    report = json.loads((run / "train" / "method.json").read_text())
    assert report["fractions"] == [0.5, 1.0][:epochs] and report["token_weights"] == weights
    # one epoch is one stage, at half the examples: the run says that it never trains on all of them
    assert report["every_example_trained" if name != "icl" else "whole_target_trained"] is (epochs == 2)
    assert (run / "curriculum" / "initial_losses.json").exists() == (name != "icl")
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert [s["stage"] for s in summary["kpod_stages"]] == [0, 1][:epochs]


def test_every_curriculum_is_registered():
    assert curriculum_names() == ["acl", "spl", "icl"]
    assert [get_curriculum(n).label for n in curriculum_names()] == ["KPOD-ACL", "KPOD-SPL", "KPOD-ICL"]
    with pytest.raises(ValueError, match="unknown curriculum"):
        get_curriculum("baby_steps")


def test_every_process_updates_the_scores_with_every_batch_and_the_cache_follows_the_targets(monkeypatch,
                                                                                              short_examples):
    from dataclasses import replace

    from kpod import distributed as dist
    from kpod.curricula import example_selection as es

    index, losses = np.array([0, 3]), np.array([1.5, 2.5])
    assert es.gathered_losses(index, losses) == (index, losses)  # one process: its own batch
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "gather", lambda part: part + [([5, 6], [0.5, 0.25])])  # the other process's batch
    rows, values = es.gathered_losses(index, losses)
    assert rows.tolist() == [0, 3, 5, 6] and values.tolist() == [1.5, 2.5, 0.5, 0.25]
    scores = np.zeros(8)
    ACL.update(scores, rows, values)
    assert scores[[0, 3, 5, 6]].tolist() == [0.0] * 4  # ACL here has momentum 0
    SPL.update(scores, rows, values)
    assert scores.tolist() == [1.5, 0, 0, 2.5, 0, 0.5, 0.25, 0]
    digest = es.targets_digest(short_examples)
    assert digest == es.targets_digest(list(short_examples))
    changed = [replace(short_examples[0], target_ids=short_examples[0].target_ids[:-2] + [7, 7])] + short_examples[1:]
    assert es.targets_digest(changed) != digest  # another target: the cached initial losses are stale

