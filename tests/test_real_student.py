"""Tests on the real shipped students (SmolLM2-135M-Instruct, Gemma 3 270M). Marked slow: `make test-slow`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpod.curriculum.difficulty import step_difficulties, target_token_nll
from kpod.data.datasets import load_split
from kpod.data.prompts import render_prompt
from kpod.data.rationales import import_rationales
from kpod.distill.dataset import DistillDataset, PadCollator
from kpod.distill.examples import encode_examples
from kpod.distill.loss import causal_lm_loss, reference_causal_lm_loss
from kpod.evaluation.generate import generate
from kpod.models import load_student

pytestmark = pytest.mark.slow


# class name, minimum parameter count, end-of-sequence token of each shipped student
EXPECTED = {
    "smollm2-135m-instruct": ("LlamaForCausalLM", 100e6, "<|im_end|>"),
    "gemma3-270m": ("Gemma3ForCausalLM", 250e6, "<eos>"),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def student(request):
    torch.manual_seed(0)
    return request.param, *load_student(request.param)


@pytest.fixture(scope="module")
def examples(student):
    _, _, tok = student
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][:8]
    return encode_examples(tok, questions, rationales, progress=False)[0]


def test_shipped_student_is_the_real_model(student):
    name, model, tok = student
    cls, min_params, eos = EXPECTED[name]
    assert type(model).__name__ == cls
    assert sum(p.numel() for p in model.parameters()) > min_params
    assert tok.eos_token == eos


def test_batched_generation_matches_one_at_a_time(student):
    _, model, tok = student
    prompts = [render_prompt(q) for q in load_split("svamp", "test")[:3]]
    one, _ = generate(model, tok, prompts, batch_size=1, max_new_tokens=24, progress=False)
    many, stats = generate(model, tok, prompts, batch_size=3, max_new_tokens=24, progress=False)
    assert one == many and all(o.strip() for o in one)
    assert stats["useful_over_computed"] == 1.0


def test_fast_loss_equals_reference_on_the_real_model(student, examples):
    _, model, tok = student
    batch = PadCollator(tok.pad_token_id)([DistillDataset(examples)[i] for i in range(4)])
    with torch.no_grad():
        assert torch.allclose(causal_lm_loss(model, batch), reference_causal_lm_loss(model, batch), atol=1e-4)


def test_step_difficulty_is_finite_and_positive(student, examples):
    _, model, tok = student
    nll = target_token_nll(model, tok, examples, batch_size=4, progress=False)
    for ex, n in zip(examples, nll):
        d = step_difficulties(n[: ex.answer_start], None, ex.step_spans)
        assert len(d) == ex.n_steps and np.isfinite(d).all() and (d > 0).all()
