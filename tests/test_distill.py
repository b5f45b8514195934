"""Encoding, labels of given steps, the token-weighted loss (fast path == reference path), and the Trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kpod.config import TrainConfig
from kpod.data.datasets import load_split
from kpod.data.rationales import import_rationales
from kpod.distill.dataset import IGNORE, DistillDataset, PadCollator, hide_given_steps
from kpod.distill.examples import encode_examples
from kpod.distill.loss import causal_lm_loss, reference_causal_lm_loss, seq2seq_loss, weighted_nll
from kpod.distill.trainer import build_trainer, run_training
from kpod.models import build_tiny_model


@pytest.fixture(scope="module")
def svamp_examples(smol_tokenizer):
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][:24]
    examples, report = encode_examples(smol_tokenizer, questions, rationales, max_length=384, progress=False)
    return examples, report


def test_encoding_keeps_steps_and_answer_apart(svamp_examples, smol_tokenizer):
    examples, report = svamp_examples
    assert report["examples"] + sum(report["skipped"].values()) == 24
    for ex in examples:
        assert ex.target_ids[-1] == smol_tokenizer.eos_token_id
        assert ex.step_spans[0][0] == 0 and ex.step_spans[-1][1] <= ex.answer_start
        answer = smol_tokenizer.decode(ex.target_ids[ex.answer_start:], skip_special_tokens=True)
        assert answer.strip().startswith("Therefore, the answer is")


def test_overlong_examples_are_counted_not_cut(smol_tokenizer):
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][:10]
    examples, report = encode_examples(smol_tokenizer, questions, rationales, max_length=60, progress=False)
    assert report["skipped"]["over_max_length"] == 10 - len(examples) > 0
    assert all(len(e) <= 60 for e in examples)


def test_choice_targets_can_name_the_choice_after_its_letter(smol_tokenizer):
    from kpod.config import RunConfig
    from kpod.curriculum.stages import weighting_examples
    from kpod.data.answers import extract_answer
    from kpod.data.records import Question, Rationale
    from kpod.pipeline import fingerprint

    q = Question(id="q1", question="Where is it dry?", answer="C", dataset="csqa",
                 choices=["lake", "sea", "california", "river", "pond"])
    r = Rationale(id="q1", rationale="It must be a dry place. Only california is dry.", teacher="t", answer="C",
                  gold="C", correct=True)
    tails = {}
    for choice_text in (False, True):
        (ex,), _ = encode_examples(smol_tokenizer, {"q1": q}, [r], progress=False, answer_choice_text=choice_text)
        tails[choice_text] = smol_tokenizer.decode(ex.target_ids[ex.answer_start:], skip_special_tokens=True)
        (weighting,) = weighting_examples(smol_tokenizer, [ex], {"q1": q}, answer_choice_text=choice_text)
        assert smol_tokenizer.decode(weighting.answer_ids) == (" (C) california." if choice_text else " C.")
        assert len(ex.step_spans) == 2  # the answer adds no step
    assert tails == {False: " Therefore, the answer is C.", True: " Therefore, the answer is (C) california."}
    assert extract_answer(tails[True], "csqa", q.choices) == "C"
    # a later option: at its default, fingerprints of earlier runs are unchanged
    default, named = RunConfig(), RunConfig.model_validate({"data": {"answer_choice_text": True}})
    assert "answer_choice_text" not in default.data.fingerprint_fields()
    assert fingerprint(named.data) != fingerprint(default.data)


def _batch(ds, indices, given, pad):
    batch = PadCollator(pad)([ds[i] for i in indices])
    return hide_given_steps(batch, ds.first_supervised(indices, given))


def test_given_steps_are_input_without_loss(svamp_examples, smol_tokenizer):
    examples, _ = svamp_examples
    ex_i = next(i for i, e in enumerate(examples) if e.n_steps >= 3)
    ex = examples[ex_i]
    weights = [np.linspace(0.1, 0.9, e.answer_start).astype(np.float32) for e in examples]
    ds = DistillDataset(examples, token_weights=weights)
    pad = smol_tokenizer.pad_token_id
    n_prompt = len(ex.prompt_ids)
    full = _batch(ds, [ex_i], [0], pad)
    assert full["input_ids"][0].tolist() == ex.prompt_ids + ex.target_ids
    assert (full["labels"][0, :n_prompt] == IGNORE).all()
    assert full["labels"][0, n_prompt:].tolist() == ex.target_ids
    given = _batch(ds, [ex_i], [2], pad)
    start = ex.step_spans[2][0]
    assert torch.equal(given["input_ids"], full["input_ids"])  # given steps stay in the input
    assert (given["labels"][0, : n_prompt + start] == IGNORE).all()
    assert given["labels"][0, n_prompt + start:].tolist() == ex.target_ids[start:]
    assert (given["weights"][0, : n_prompt + start] == 0).all()
    assert np.allclose(given["weights"][0, n_prompt + start: n_prompt + ex.answer_start].numpy(), weights[ex_i][start:])
    assert (given["weights"][0, n_prompt + ex.answer_start:] == 1.0).all()  # the answer term weighs 1
    with pytest.raises(ValueError, match="given_steps"):
        ds.first_supervised([ex_i], [ex.n_steps])


def test_weighted_nll_ignores_zero_weights_and_rejects_empty_batches():
    logits = torch.randn(4, 7)
    targets = torch.tensor([1, 2, 3, 4])
    w = torch.tensor([1.0, 0.0, 0.5, 0.0])
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(weighted_nll(logits, targets, w, "tokens"), (nll[0] + 0.5 * nll[2]) / 4)
    assert torch.allclose(weighted_nll(logits, targets, w, "weights"), (nll[0] + 0.5 * nll[2]) / 1.5)
    with pytest.raises(ValueError, match="no supervised token"):
        weighted_nll(logits[:0], targets[:0], w[:0], "tokens")


def test_fast_loss_matches_full_logits_loss_and_gradients(svamp_examples, smol_tokenizer):
    examples, _ = svamp_examples
    model = build_tiny_model("llama", smol_tokenizer, seed=1)
    ds = DistillDataset(examples[:4], token_weights=[np.random.RandomState(i).rand(e.answer_start).astype(np.float32)
                                                     for i, e in enumerate(examples[:4])])
    given = [min(g, examples[i].n_steps - 1) for i, g in enumerate([1, 0, 2, 1])]
    batch = _batch(ds, [0, 1, 2, 3], given, smol_tokenizer.pad_token_id)
    for norm in ("tokens", "weights"):
        model.zero_grad()
        fast = causal_lm_loss(model, batch, norm)
        fast.backward()
        g_fast = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        ref = reference_causal_lm_loss(model, batch, norm)
        ref.backward()
        g_ref = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        assert torch.allclose(fast, ref, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_fast, g_ref))


def test_loss_changes_when_a_step_is_given(svamp_examples, smol_tokenizer):
    examples, _ = svamp_examples
    model = build_tiny_model("llama", smol_tokenizer, seed=1)
    i, j = [k for k, e in enumerate(examples) if e.n_steps >= 2][:2]
    ds = DistillDataset(examples)
    full = causal_lm_loss(model, _batch(ds, [i, j], [0, 0], smol_tokenizer.pad_token_id))
    partial = causal_lm_loss(model, _batch(ds, [i, j], [1, 1], smol_tokenizer.pad_token_id))
    assert not torch.isclose(full, partial)


def test_seq2seq_student_keeps_given_steps_in_the_decoder_input(svamp_examples, smol_tokenizer):
    examples, _ = svamp_examples
    model = build_tiny_model("t5", smol_tokenizer)
    i, j = [k for k, e in enumerate(examples) if e.n_steps >= 2][:2]
    ds = DistillDataset(examples, seq2seq=True, decoder_start_token_id=model.config.decoder_start_token_id)
    batch = _batch(ds, [i, j], [1, 1], smol_tokenizer.pad_token_id)
    assert batch["decoder_input_ids"][0, 1: len(examples[i].target_ids)].tolist() == examples[i].target_ids[:-1]
    assert (batch["labels"][0, : examples[i].step_spans[1][0]] == IGNORE).all()
    loss = seq2seq_loss(model, batch)
    assert torch.isfinite(loss) and loss.item() > 0


def test_trainer_learns_checkpoints_and_resumes(svamp_examples, smol_tokenizer, tmp_path):
    examples, _ = svamp_examples
    cfg = TrainConfig(epochs=1, batch_size=4, lr=3e-3, warmup_steps=0, save_steps=2, logging_steps=1)
    model = build_tiny_model("llama", smol_tokenizer, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    ds = DistillDataset(examples[:16])
    trainer = build_trainer(model, smol_tokenizer, ds, cfg, tmp_path / "train", seed=0)
    summary = run_training(trainer, tmp_path / "train", tmp_path / "final")
    assert summary["global_steps"] == 4 and len(summary["loss_curve"]) == 4
    assert summary["loss_curve"][-1]["loss"] < summary["loss_curve"][0]["loss"]
    assert (tmp_path / "train" / "checkpoint-4").exists() and (tmp_path / "final").exists()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert json.loads((tmp_path / "train" / "summary.json").read_text())["tokens_this_run"] > 0

    first = json.loads((tmp_path / "train" / "checkpoint-4" / "kpod_train_wall_s.json").read_text())["train_wall_s"]

    # A second run for 2 epochs resumes from checkpoint-4 and only does the remaining 4 steps.
    cfg2 = cfg.model_copy(update={"epochs": 2})
    model2 = build_tiny_model("llama", smol_tokenizer, seed=0)
    trainer2 = build_trainer(model2, smol_tokenizer, DistillDataset(examples[:16]), cfg2, tmp_path / "train", seed=0)
    summary2 = run_training(trainer2, tmp_path / "train", tmp_path / "final")
    assert summary2["resumed_from"] == "checkpoint-4"
    assert summary2["global_steps"] == 8 and summary2["steps_this_run"] == 4
    # its cost counts the first attempt's training up to checkpoint-4 too, and its loss curve starts at step 1
    assert first > 0 and summary2["train_wall_s_all_attempts"] == pytest.approx(first + summary2["train_wall_s"], abs=0.2)
    assert [p["step"] for p in summary2["loss_curve"]] == list(range(1, 9))
