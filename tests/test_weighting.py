"""Tests of the rationale token weighting stage (kpod.weighting): Gumbel sampling, prefix sampling, the
predictor input, the losses, training on a synthetic keypoint task, the artefact, the summary and the pictures.

The synthetic task: a rationale is filler tokens with two digit tokens at random places, the answer is those
two digits in order. Only the digits matter, so a working module must keep them and mask the filler.
"""

from __future__ import annotations

import html
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from kpod.weighting import (
    TokenWeightingModule,
    WeightedRationale,
    WeightingConfig,
    WeightingExample,
    classify_token,
    fit_weighting_module,
    gumbel_keep_mask,
    load_weights_jsonl,
    predict_token_weights,
    save_weights_jsonl,
    summarize_weights,
    temperature_at,
    train_token_weighting,
    weights_to_html,
    write_weighting_report,
    write_weights_png,
)
from kpod.weighting.batching import (
    IGNORE_INDEX,
    answer_nll,
    build_predictor_batch,
    pad_examples,
    pad_id_lists,
    sample_prefix_lengths,
)
from kpod.weighting.train import score_function_surrogate, weighting_loss

VOCAB = 64
DIGITS = list(range(10, 20))
FILLER = list(range(20, 60))
QUESTION = [1, 2, 3]  # the same for every example, so the answer cannot be memorised from the question
CUE = [60, 61, 62]


def make_examples(n: int, seed: int, filler_length: int = 10) -> list[WeightingExample]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        rationale = [rng.choice(FILLER) for _ in range(filler_length)]
        digits = [rng.choice(DIGITS), rng.choice(DIGITS)]
        for position, digit in zip(sorted(rng.sample(range(filler_length + 2), 2)), digits):
            rationale.insert(position, digit)
        examples.append(WeightingExample(list(QUESTION), rationale, digits))
    return examples


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def class_means(weights: list[np.ndarray], examples: list[WeightingExample]) -> tuple[float, float]:
    digit = np.concatenate([w[np.isin(e.rationale_ids, DIGITS)] for w, e in zip(weights, examples)])
    filler = np.concatenate([w[np.isin(e.rationale_ids, FILLER)] for w, e in zip(weights, examples)])
    return float(digit.mean()), float(filler.mean())


@pytest.fixture(scope="module")
def pretrained_predictor() -> LlamaForCausalLM:
    """A tiny Llama taught (on unmasked rationales) to answer with the rationale's digits, as a pre-trained
    predictor would; its input embedding then also tells digits from filler, as a real one does."""
    return teach_digit_answers(tiny_llama())


def teach_digit_answers(model: nn.Module) -> nn.Module:
    """Train `model` in place (the weighting stage's predictor warm-up, full fine-tuning) to answer with the digits."""
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on busy machines
    config = WeightingConfig(
        max_steps=1, alpha=0.0, predictor_mode="full", predictor_warmup_steps=150, predictor_lr=3e-3,
        copy_predictor=False,
    )
    fit = fit_weighting_module(make_examples(2400, seed=100), model.get_input_embeddings(), model, config, CUE, progress=False)
    assert np.mean(fit.stats["warmup_loss"][-20:]) < np.mean(fit.stats["warmup_loss"][:20]) - 1.0
    return model


# --- Eq. 4: Gumbel-Softmax sampling -------------------------------------------------------------------------


def test_gumbel_mask_is_hard_follows_the_keep_probability_and_passes_gradient():
    keep_probability = torch.tensor([0.1, 0.5, 0.8]).repeat(20000, 1)
    logits = torch.logit(keep_probability).requires_grad_(True)
    mask = gumbel_keep_mask(logits, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    # Gumbel-max over {keep, mask} with log-probabilities (log w, log 1-w) keeps a token with probability w.
    assert torch.allclose(mask.detach().mean(dim=0), torch.tensor([0.1, 0.5, 0.8]), atol=0.015)
    (mask * torch.arange(3.0)).sum().backward()  # straight-through: the hard sample has a gradient
    assert logits.grad is not None and (logits.grad[:, 1:] > 0).float().mean() > 0.99

    soft = gumbel_keep_mask(logits.detach(), 0.5, torch.Generator().manual_seed(0), hard=False)
    assert ((soft > 0) & (soft < 1)).float().mean() > 0.99  # relaxed sample: values strictly inside (0, 1)
    assert torch.equal((soft > 0.5).float(), mask.detach())  # same noise, same decisions


def test_temperature_schedules_go_from_start_to_end():
    for kind in ("exponential", "linear"):
        config = WeightingConfig(temperature_start=2.0, temperature_end=0.5, temperature_schedule=kind)
        values = [temperature_at(s, 11, config) for s in range(11)]
        assert values[0] == pytest.approx(2.0) and values[-1] == pytest.approx(0.5)
        assert all(a > b for a, b in zip(values, values[1:]))
    assert temperature_at(7, 11, WeightingConfig(temperature_schedule="constant")) == 1.0


# --- Eq. 5: prefix sampling and the predictor input ---------------------------------------------------------


def test_prefix_lengths_are_uniform_and_give_an_unbiased_estimate():
    lengths = torch.tensor([0, 1, 5, 12])
    samples = sample_prefix_lengths(lengths, 40000, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 40000)
    for row, length in enumerate(lengths.tolist()):
        assert samples[row].min() >= 0 and samples[row].max() <= length
        frequency = torch.bincount(samples[row], minlength=length + 1).float() / samples.shape[1]
        assert torch.allclose(frequency, torch.full((length + 1,), 1.0 / (length + 1)), atol=0.01)
        # The sampled mean of f(k) estimates the mean over all L + 1 prefixes (the Eq. 5 sum / (L + 1)).
        f = lambda k: (k.float() - 3.0) ** 2
        exact = f(torch.arange(length + 1)).mean()
        assert f(samples[row]).mean() == pytest.approx(exact.item(), rel=0.03, abs=0.03)


def _decode(batch, table: torch.Tensor) -> list[list[int]]:
    """Recover token ids from one-hot input embeddings (-1 = the mask vector, None = padding)."""
    rows = []
    for embeds, attention in zip(batch.inputs_embeds, batch.attention_mask):
        row = []
        for vector, present in zip(embeds, attention):
            if not present:
                row.append(None)
            elif vector.abs().sum() == 0:
                row.append(0)
            elif torch.allclose(vector, table[-1]):
                row.append(-1)
            else:
                row.append(int(vector.argmax()))
        rows.append(row)
    return rows


@pytest.mark.parametrize("representation", ["mask_embedding", "zero", "drop"])
def test_predictor_batch_layout(representation):
    examples = [WeightingExample([1, 2], [10, 21, 11], [12]), WeightingExample([3], [22, 13], [14, 15])]
    config = WeightingConfig()
    batch = pad_examples(examples, config)
    table = torch.eye(VOCAB)
    embedding = nn.Embedding.from_pretrained(table)
    mask_vector = table[-1]  # a recognisable stand-in for the learned mask vector
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    prefixes = torch.tensor([[3, 1], [2, 0]])
    out = build_predictor_batch(batch, keep, prefixes, embedding, torch.tensor([60]), representation, mask_vector)

    masked = {"mask_embedding": [-1], "zero": [0], "drop": []}[representation]
    expected = [
        [1, 2, 10, *masked, 11, 60, 12],  # example 0, prefix 3
        [1, 2, 10, 60, 12],  # example 0, prefix 1
        [3, *masked, 13, 60, 14, 15],  # example 1, prefix 2
        [3, 60, 14, 15],  # example 1, prefix 0
    ]
    decoded = _decode(out, table)
    width = out.inputs_embeds.shape[1]
    assert width == max(len(e) for e in expected)
    for row, want in enumerate(expected):
        pad = width - len(want)
        assert decoded[row] == [None] * pad + want  # left-padded, answer last
        assert out.position_ids[row, pad:].tolist() == list(range(len(want)))
        answer = examples[row // 2].answer_ids
        assert out.labels[row].tolist() == [IGNORE_INDEX] * (width - len(answer)) + answer


def test_answer_nll_matches_a_plain_cross_entropy():
    torch.manual_seed(0)
    model = tiny_llama(seed=1)
    examples = make_examples(4, seed=3)
    examples[1].answer_ids = [15]  # answers of different lengths
    batch = pad_examples(examples, WeightingConfig())
    keep = torch.ones_like(batch.rationale, dtype=torch.float32)
    prefixes = torch.tensor([[12], [5], [0], [7]])
    inputs = build_predictor_batch(batch, keep, prefixes, model.get_input_embeddings(), torch.tensor(CUE), "zero")
    full = model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                 position_ids=inputs.position_ids).logits
    expected = nn.functional.cross_entropy(
        full[:, :-1].reshape(-1, VOCAB), inputs.labels[:, 1:].reshape(-1), reduction="none"
    ).view(4, -1).sum(dim=1)
    kept = full[:, -(inputs.answer_width + 1):]
    assert torch.allclose(answer_nll(kept, inputs.labels), expected, atol=1e-5)


def test_weighting_loss_normalisations():
    nll = torch.tensor([1.0, 3.0, 2.0, 2.0])  # 2 examples x 2 prefixes
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])  # example 1 has 2 real tokens
    lengths = torch.tensor([4, 2])
    total, lp, lm = weighting_loss(nll, keep, lengths, alpha=0.5, normalisation="per_token")
    assert lp.item() == pytest.approx(2.0) and lm.item() == pytest.approx((3 / 4 + 2 / 2) / 2)
    assert total.item() == pytest.approx(2.0 + 0.5 * 0.875)
    total, lp, lm = weighting_loss(nll, keep, lengths, alpha=0.5, normalisation="sum")
    assert lp.item() == pytest.approx((2.0 * 5 + 2.0 * 3) / 2) and lm.item() == pytest.approx((3 + 2) / 2)


def test_score_function_surrogate_is_unbiased_and_ignores_unread_tokens():
    """Averaged over many draws, the surrogate's gradient matches the exact gradient of E_m[f(m)], computed by
    summing over all 2^3 masks; a token past every prefix gets no gradient."""
    torch.manual_seed(0)
    logits = torch.tensor([0.8, -0.4, 1.5, 0.3], requires_grad=True)  # token 3 lies past the prefix (k = 3)
    table = torch.randn(8) * 3.0  # f(m) for each mask of the first three tokens, m read as a 3-bit number
    value = lambda m: table[(m[..., 0] * 4 + m[..., 1] * 2 + m[..., 2]).long()]
    masks = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=torch.float32)
    p = torch.sigmoid(logits[:3])
    exact = (torch.prod(masks * p + (1 - masks) * (1 - p), dim=1) * table).sum()
    (exact_grad,) = torch.autograd.grad(exact, logits)

    rationales, samples = 100_000, 4
    keep = (torch.rand(rationales, samples, 4) < torch.sigmoid(logits.detach())).float()
    nll = value(keep)[..., None]  # [B, S, P = 1]
    prefixes = torch.full((rationales, 1), 3)
    surrogate = score_function_surrogate(nll, keep, logits.expand(rationales, 4), prefixes,
                                         torch.full((rationales,), 4), "per_token")
    (estimate,) = torch.autograd.grad(surrogate, logits)
    assert estimate[3] == 0
    torch.testing.assert_close(estimate[:3], exact_grad[:3], atol=0.02, rtol=0.05)


def test_score_function_needs_a_frozen_predictor():
    with pytest.raises(ValueError, match="predictor_mode='frozen'"):
        WeightingConfig(gradient_estimator="score_function", predictor_mode="lora")
    with pytest.raises(ValueError):
        WeightingConfig(gradient_estimator="score_function", score_function_samples=1)


# --- training -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hard", [True, False])
def test_gradients_reach_the_weight_generator_through_the_sampling(pretrained_predictor, hard):
    config = WeightingConfig(predictor_mode="frozen")
    module = TokenWeightingModule(pretrained_predictor.get_input_embeddings(), config)
    embedding = pretrained_predictor.get_input_embeddings()
    mask_vector = nn.Parameter(embedding.weight.detach().mean(dim=0).clone())
    batch = pad_examples(make_examples(8, seed=5), config)
    real = (torch.arange(batch.rationale.shape[1])[None] < batch.rationale_lengths[:, None]).long()
    keep = gumbel_keep_mask(module.logits(batch.rationale, real), 0.7, torch.Generator().manual_seed(0), hard=hard)
    prefixes = sample_prefix_lengths(batch.rationale_lengths, 2, torch.Generator().manual_seed(1))
    inputs = build_predictor_batch(batch, keep, prefixes, embedding, torch.tensor(CUE), "mask_embedding", mask_vector)
    logits = pretrained_predictor(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                  position_ids=inputs.position_ids).logits
    # alpha = 0: only the answer loss, so any gradient in the module came through predictor and sampling.
    loss, _, _ = weighting_loss(answer_nll(logits, inputs.labels), keep, batch.rationale_lengths, 0.0, "per_token")
    pretrained_predictor.zero_grad(set_to_none=True)
    loss.backward()
    for name in ("attention.in_proj_weight", "weight_generator.0.weight", "weight_generator.2.weight", "input_projection.weight"):
        grad = dict(module.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert mask_vector.grad is not None and mask_vector.grad.abs().sum() > 0
    assert module.embedding_table.grad is None  # the embedding stays frozen


def test_module_keeps_digits_and_masks_filler(pretrained_predictor):
    examples = make_examples(256, seed=7)
    examples.append(WeightingExample(list(QUESTION), [], [11]))  # nothing to weight: skipped, empty weights
    config = WeightingConfig(max_steps=120, predictor_mode="lora", lr=1e-3, num_prefix_lengths=2, predictor_lr=1e-3)
    weights, stats = train_token_weighting(
        examples, pretrained_predictor.get_input_embeddings(), pretrained_predictor, config, CUE, progress=False
    )
    assert [len(w) for w in weights] == [len(e.rationale_ids) for e in examples]
    values = np.concatenate(weights)
    assert ((values > 0) & (values < 1)).all()
    digit, filler = class_means(weights[:-1], examples[:-1])
    assert digit - filler > 0.6, (digit, filler)
    assert stats["skipped_examples"] == 1 and stats["steps"] == 120
    assert len(stats["loss"]) == len(stats["keep_ratio"]) == len(stats["temperature"]) == 120
    assert stats["final_keep_ratio"] < 0.5  # filler (10 of 12 tokens) is masked
    assert stats["examples_per_second"] > 0


def test_default_settings_keep_digits_and_mask_filler(pretrained_predictor):
    """The defaults (frozen predictor, one prefix per rationale, lr 1e-2) separate keypoints in a few dozen steps."""
    examples = make_examples(256, seed=11)
    before = {k: v.clone() for k, v in pretrained_predictor.state_dict().items()}
    weights, stats = train_token_weighting(
        examples, pretrained_predictor.get_input_embeddings(), pretrained_predictor, WeightingConfig(max_steps=40),
        CUE, progress=False,
    )
    digit, filler = class_means(weights, examples)
    assert digit > 0.9 and filler < 0.2, (digit, filler)
    after = pretrained_predictor.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # frozen: the predictor is not trained


def test_score_function_estimator_keeps_digits_and_masks_filler(pretrained_predictor):
    """Hard masks scored by forward passes only: the module still learns that the answer needs the digits, and
    neither the predictor nor its gradients are touched."""
    examples = make_examples(256, seed=13)
    pretrained_predictor.zero_grad(set_to_none=True)  # left over from the fixture's own training
    before = {k: v.clone() for k, v in pretrained_predictor.state_dict().items()}
    config = WeightingConfig(max_steps=60, gradient_estimator="score_function", lr=3e-3)
    weights, stats = train_token_weighting(
        examples, pretrained_predictor.get_input_embeddings(), pretrained_predictor, config, CUE, progress=False
    )
    digit, filler = class_means(weights, examples)
    assert digit > 0.9 and filler < 0.2, (digit, filler)
    assert not stats["weights_nearly_constant"] and len(stats["keep_ratio"]) == 60
    assert "temperature" not in stats  # hard Bernoulli masks: no Gumbel temperature is used, so none is recorded
    after = pretrained_predictor.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(p.grad is None for p in pretrained_predictor.parameters())


def test_on_step_sees_every_joint_step_and_the_module_as_trained(pretrained_predictor):
    examples = make_examples(32, seed=12)
    probe = [examples[0].rationale_ids]
    seen = []
    config = WeightingConfig(max_steps=6, batch_size=8)

    def trace(step, module):
        assert not torch.is_grad_enabled()
        seen.append((step, predict_token_weights(module, probe)[0]))

    fit = fit_weighting_module(examples, pretrained_predictor.get_input_embeddings(), pretrained_predictor, config,
                               CUE, progress=False, on_step=trace)
    assert [step for step, _ in seen] == list(range(6))
    assert not np.allclose(seen[0][1], seen[-1][1])  # the module moved between the first and the last step
    np.testing.assert_allclose(seen[-1][1], predict_token_weights(fit.module, probe)[0])


def test_larger_alpha_masks_more(pretrained_predictor, caplog):
    examples = make_examples(128, seed=8)
    mean_weight, keep_ratio, constant, warned = [], [], [], []
    for alpha in (0.0, 0.5, 50.0):
        config = WeightingConfig(alpha=alpha, max_steps=60, predictor_mode="frozen")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kpod.weighting.train"):
            weights, stats = train_token_weighting(
                examples, pretrained_predictor.get_input_embeddings(), pretrained_predictor, config, CUE, progress=False
            )
        mean_weight.append(float(np.concatenate(weights).mean()))
        keep_ratio.append(stats["final_keep_ratio"])
        assert stats["weight_std"] == pytest.approx(float(np.concatenate(weights).std()), abs=1e-6)
        constant.append(stats["weights_nearly_constant"])
        warned.append(any("nearly one constant" in r.getMessage() for r in caplog.records))
    assert mean_weight[0] > mean_weight[1] + 0.05 > mean_weight[2] + 0.1, mean_weight
    assert keep_ratio[0] > keep_ratio[1] + 0.05 > keep_ratio[2] + 0.1, keep_ratio
    # alpha 50 masks every token alike (all at the lower bound): the run says so; alpha 0.5 separates digits.
    assert constant[1:] == [False, True] and warned[1:] == [False, True], (constant, warned)


def test_weights_are_deterministic_for_a_seed_and_the_caller_model_is_untouched():
    examples = make_examples(48, seed=9)
    predictor = tiny_llama(seed=2)
    before = {k: v.clone() for k, v in predictor.state_dict().items()}

    def run(seed: int) -> list[np.ndarray]:
        config = WeightingConfig(max_steps=6, batch_size=8, seed=seed, predictor_mode="full")
        return train_token_weighting(examples, predictor.get_input_embeddings(), predictor, config, CUE, progress=False)[0]

    first, second, other = run(0), run(0), run(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.allclose(a, b) for a, b in zip(first, other))
    assert all(torch.equal(before[k], v) for k, v in predictor.state_dict().items())

    predictor.train()
    config = WeightingConfig(max_steps=2, batch_size=8, predictor_mode="frozen", max_train_examples=16)
    weights, stats = train_token_weighting(examples, predictor.get_input_embeddings(), predictor, config, CUE, progress=False)
    assert stats["train_examples"] == 16 and len(weights) == len(examples)  # trained on a subset, weights for all
    assert predictor.training and all(p.requires_grad for p in predictor.parameters())
    assert all(p.grad is None for p in predictor.parameters())


def test_inference_does_not_depend_on_the_batch():
    module = TokenWeightingModule(tiny_llama().get_input_embeddings(), WeightingConfig())
    rationales = [e.rationale_ids[: 4 + i] for i, e in enumerate(make_examples(6, seed=4))]
    together = predict_token_weights(module, rationales, batch_size=6)
    alone = [predict_token_weights(module, [r])[0] for r in rationales]
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(together, alone))


def test_centred_logits_keep_one_common_level_per_rationale():
    config = WeightingConfig(center_logits=True, initial_keep_probability=0.8)
    torch.manual_seed(0)
    module = TokenWeightingModule(tiny_llama().get_input_embeddings(), config)
    with torch.no_grad():
        module.weight_generator[-1].weight.normal_(std=1.0)  # tokens differ, as after training
        module.keep_level.fill_(-0.7)
    rationales = [e.rationale_ids[: 5 + 3 * i] for i, e in enumerate(make_examples(3, seed=5))]
    ids, lengths = pad_id_lists(rationales)
    real = torch.arange(ids.shape[1])[None] < lengths[:, None]
    z = module.logits(ids, real.long()).detach()
    raw = config.logit_bound * torch.atanh(z / config.logit_bound)  # undo the soft bound
    for row, n in enumerate(lengths.tolist()):
        assert raw[row, :n].mean().item() == pytest.approx(-0.7, abs=1e-4)  # padding left out of the mean
        assert raw[row, :n].std().item() > 0.1  # the tokens still differ around it
    alone = [predict_token_weights(module, [r])[0] for r in rationales]  # padding does not move a real token
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(predict_token_weights(module, rationales), alone))
    assert "keep_level" not in dict(TokenWeightingModule(tiny_llama().get_input_embeddings(), WeightingConfig()).named_parameters())


def test_centred_logits_still_keep_digits_and_mask_filler(pretrained_predictor):
    """With the common level apart from the per-token differences, the default settings still separate keypoints."""
    examples = make_examples(256, seed=11)
    weights, stats = train_token_weighting(
        examples, pretrained_predictor.get_input_embeddings(), pretrained_predictor,
        WeightingConfig(max_steps=40, center_logits=True), CUE, progress=False,
    )
    digit, filler = class_means(weights, examples)
    assert digit > 0.9 and filler < 0.2, (digit, filler)


def test_whole_rationale_prefixes_feed_the_predictor_every_masked_rationale_whole():
    """answer_prefixes='whole': one predictor row per rationale, holding question, the whole rationale, cue and answer."""
    examples = make_examples(8, seed=12)
    predictor = tiny_llama()
    seen: list[list[int]] = []
    predictor.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["attention_mask"].sum(dim=1).tolist()), with_kwargs=True
    )
    whole = len(QUESTION) + 12 + len(CUE) + 2  # every synthetic rationale has 12 tokens and a 2-token answer
    config = WeightingConfig(max_steps=3, batch_size=4, answer_prefixes="whole", num_prefix_lengths=3)
    train_token_weighting(examples, predictor.get_input_embeddings(), predictor, config, CUE, progress=False)
    assert seen and all(rows == [whole] * 4 for rows in seen), seen
    seen.clear()
    config = WeightingConfig(max_steps=3, batch_size=4, num_prefix_lengths=3)  # the paper's: sampled prefixes
    train_token_weighting(examples, predictor.get_input_embeddings(), predictor, config, CUE, progress=False)
    assert all(len(rows) == 12 for rows in seen) and any(n < whole for rows in seen for n in rows)


def test_whole_rationale_prefixes_still_keep_digits_and_mask_filler(pretrained_predictor):
    examples = make_examples(256, seed=13)
    weights, _ = train_token_weighting(
        examples, pretrained_predictor.get_input_embeddings(), pretrained_predictor,
        WeightingConfig(max_steps=40, answer_prefixes="whole"), CUE, progress=False,
    )
    digit, filler = class_means(weights, examples)
    assert digit > 0.9 and filler < 0.2, (digit, filler)


# --- artefact, summary, pictures ----------------------------------------------------------------------------


HAND_TOKENS = [" He", " buys", " 2", "*", "5", "=", "10", " drinks", ".", " The", " total", " x", " $", "3.5", "\n"]
HAND_WEIGHTS = [0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 1.0, 0.3, 0.05, 0.1, 0.75, 0.5, 0.2, 0.9, 0.0]


def hand_row(key: str = "q1#0") -> WeightedRationale:
    return WeightedRationale(key, list(HAND_TOKENS), list(range(len(HAND_TOKENS))), list(HAND_WEIGHTS), [[0, 9], [9, 15]])


def test_artefact_round_trip_and_validation(tmp_path):
    path = tmp_path / "weights.jsonl"
    assert save_weights_jsonl(path, [hand_row("a"), hand_row("b").to_json()]) == 2
    rows = load_weights_jsonl(path)
    assert [r.rationale_key for r in rows] == ["a", "b"]
    assert rows[0].tokens == HAND_TOKENS and rows[0].weights == pytest.approx(HAND_WEIGHTS)
    assert rows[1].step_spans == [[0, 9], [9, 15]]
    with pytest.raises(ValueError):
        WeightedRationale("bad", ["a", "b"], [1, 2], [0.5], [])
    with pytest.raises(ValueError):
        WeightedRationale("bad", ["a", "b"], [1, 2], [0.5, 0.5], [[0, 3]])


def test_summary_classes_on_a_hand_built_row():
    assert [classify_token(t) for t in HAND_TOKENS] == [
        "other_word", "other_word", "digit", "operator", "digit", "operator", "digit", "other_word",
        "punctuation", "other_word", "cue_word", "operator", "punctuation", "digit", "whitespace",
    ]
    summary = summarize_weights([hand_row(), hand_row("q2#0")], top_k=3, min_count=2)
    classes = summary["classes"]
    assert summary["num_rationales"] == 2 and summary["num_tokens"] == 30
    assert summary["weight_std"] == pytest.approx(float(np.std(HAND_WEIGHTS * 2)))
    assert classes["digit"] == {"count": 8, "mean_weight": pytest.approx((0.9 + 0.7 + 1.0 + 0.9) / 4)}
    assert classes["operator"]["mean_weight"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert classes["other_word"]["mean_weight"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.1) / 4)
    assert classes["cue_word"]["mean_weight"] == pytest.approx(0.75)
    assert classes["punctuation"]["mean_weight"] == pytest.approx((0.05 + 0.2) / 2)
    assert classes["other"] == {"count": 0, "mean_weight": None}
    assert [t["token"] for t in summary["top_tokens"]] == ["10", "2", "3.5"]
    assert summary["top_tokens"][0] == {"token": "10", "class": "digit", "count": 2, "mean_weight": pytest.approx(1.0)}
    assert [t["token"] for t in summary["bottom_tokens"]] == ["", ".", "he"]  # "\n" strips to ""; then ties by name


def test_html_shows_every_token_and_png_is_written(tmp_path):
    row = hand_row()
    row.tokens[1] = " <b>&"  # must be escaped, not interpreted
    page = weights_to_html([row])
    for token in row.tokens:
        assert f">{html.escape(token)}</span>" in page
    assert page.count("class='s'") == len(row.step_spans)
    assert "<b>&" not in page
    path = write_weights_png(tmp_path / "weights.png", [row, hand_row("q2#0")])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_raw_vocabulary_tokens_are_read_like_decoded_ones(tmp_path):
    raw = hand_row()
    raw.tokens = [t.replace(" ", "Ġ").replace("\n", "Ċ") for t in raw.tokens]  # as convert_ids_to_tokens gives
    assert summarize_weights([raw])["classes"] == summarize_weights([hand_row()])["classes"]
    save_weights_jsonl(tmp_path / "weights.jsonl", [raw, hand_row("q2#0")])
    summary = write_weighting_report(tmp_path, n_show=1, seed=0)
    assert summary["shown"] in (["q1#0"], ["q2#0"]) and summary["num_rationales"] == 2
    assert "Ġ" not in (tmp_path / "weights.html").read_text(encoding="utf-8")
    assert {p.name for p in tmp_path.iterdir()} >= {"summary.json", "weights.html", "weights.png"}
    # The file on disk names its neighbours relative to its folder (folders are copied between runs); the
    # returned summary gives their paths.
    written = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert written["files"] == [Path(f).name for f in summary["files"]]
    assert all(Path(f).parent == tmp_path for f in summary["files"])


@pytest.mark.slow
def test_real_student_as_embedding_and_predictor():
    from kpod.models import load_student
    from kpod.weighting import token_strings

    model, tok = load_student("smollm2-135m-instruct")
    items = [
        ("Q: Tom has 3 apples and buys 4 more. How many apples does he have?\nA:", " He has 3 + 4 = 7 apples.", " 7."),
        ("Q: A box holds 6 pens. How many pens are in 5 boxes?\nA:", " Each box has 6 pens, so 5 x 6 = 30.", " 30."),
    ]
    examples = [WeightingExample(tok(q).input_ids, tok(r).input_ids, tok(a).input_ids) for q, r, a in items]
    before = model.get_input_embeddings().weight.detach().clone()
    config = WeightingConfig(max_steps=2, batch_size=2, predictor_mode="lora")  # LoRA on a copy
    weights, stats = train_token_weighting(
        examples, model.get_input_embeddings(), model, config, tok(" Therefore, the answer is").input_ids, progress=False
    )
    assert [len(w) for w in weights] == [len(e.rationale_ids) for e in examples]
    assert all(((w > 0) & (w < 1)).all() for w in weights) and np.isfinite(stats["loss"]).all()
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert "".join(token_strings(tok, examples[0].rationale_ids)) == items[0][1]


def test_mask_vector_starts_at_the_mean_input_the_model_reads():
    """A layer that scales its rows on the way out (as Gemma's does) starts the mask vector at the mean of its
    outputs, not of its table; a plain nn.Embedding at its table's mean."""
    from kpod.weighting.train import mean_input_embedding

    class ScaledEmbedding(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 25.0

    torch.manual_seed(0)
    plain, scaled = nn.Embedding(50, 8), ScaledEmbedding(50, 8)
    scaled.weight.data.copy_(plain.weight.data)
    assert torch.equal(mean_input_embedding(plain), plain.weight.mean(dim=0))
    assert torch.allclose(mean_input_embedding(scaled, chunk=7), 25.0 * plain.weight.mean(dim=0), atol=1e-5)


# --- encoder-decoder predictors (the paper's FlanT5) ---------------------------------------------------------


def tiny_t5(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(config)


def test_seq2seq_predictor_reads_the_row_in_its_encoder_and_is_scored_on_the_answer():
    """Encoder: [question][rationale prefix][cue], left-padded; decoder: start + answer; and the NLL of every row
    equals the model's own loss on that row alone, unpadded, from token ids."""
    from kpod.weighting.train import answer_nll_fn, decoder_start_id

    model = tiny_t5(seed=1).eval()
    examples = make_examples(4, seed=3)
    examples[1].answer_ids = [15]  # answers of different lengths
    batch = pad_examples(examples, WeightingConfig())
    keep = torch.ones_like(batch.rationale, dtype=torch.float32)
    prefixes = torch.tensor([[12], [5], [0], [7]])
    inputs = build_predictor_batch(batch, keep, prefixes, model.get_input_embeddings(), torch.tensor(CUE), "zero",
                                   decoder_start_token_id=decoder_start_id(model))
    # Teacher forcing: the start token, then the answer less its last token (a lone answer token feeds only the
    # padding position, which the labels ignore).
    assert inputs.decoder_input_ids.tolist() == [[0, e.answer_ids[0]] for e in examples]
    assert inputs.labels.tolist() == [e.answer_ids + [IGNORE_INDEX] * (2 - len(e.answer_ids)) for e in examples]
    nll = answer_nll_fn(model)(inputs)
    for row, (example, k) in enumerate(zip(examples, prefixes[:, 0].tolist())):
        encoder_ids = example.question_ids + example.rationale_ids[:k] + CUE
        assert int(inputs.attention_mask[row].sum()) == len(encoder_ids)
        alone = model(input_ids=torch.tensor([encoder_ids]), labels=torch.tensor([example.answer_ids])).loss
        assert nll[row].item() == pytest.approx(alone.item() * len(example.answer_ids), rel=1e-4)
    assert decoder_start_id(tiny_llama()) is None


def test_an_encoder_decoder_reads_its_end_token_after_the_cue_not_after_the_question(smol_tokenizer):
    from kpod.curriculum.stages import answer_cue_ids, weighting_examples
    from kpod.data.records import Question
    from kpod.distill.examples import EncodedExample

    eos = smol_tokenizer.eos_token_id
    prompt = smol_tokenizer("Q: How many apples? A:", add_special_tokens=False).input_ids
    target = smol_tokenizer(" 2 + 3 = 5. Therefore, the answer is 5.", add_special_tokens=False).input_ids + [eos]
    example = EncodedExample("q1#t#0", "q1", prompt + [eos], target, [(0, 6)], 6)  # as a T5 tokenizer ends a prompt
    questions = {"q1": Question(id="q1", question="How many apples?", answer="5", dataset="custom")}
    causal = weighting_examples(smol_tokenizer, [example], questions)[0]
    seq2seq = weighting_examples(smol_tokenizer, [example], questions, seq2seq=True)[0]
    assert causal.question_ids == prompt + [eos] and seq2seq.question_ids == prompt
    assert seq2seq.rationale_ids == causal.rationale_ids == target[:6]
    cue = smol_tokenizer(" Therefore, the answer is", add_special_tokens=False).input_ids
    assert answer_cue_ids(smol_tokenizer) == cue and answer_cue_ids(smol_tokenizer, seq2seq=True) == cue + [eos]


@pytest.fixture(scope="module")
def pretrained_t5_predictor():
    """A tiny T5 taught on unmasked rationales to answer with their digits (as `pretrained_predictor`)."""
    return teach_digit_answers(tiny_t5())


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_seq2seq_predictor_lets_the_module_keep_digits_and_mask_filler(pretrained_t5_predictor, mode):
    examples = make_examples(256, seed=11)
    before = {k: v.clone() for k, v in pretrained_t5_predictor.state_dict().items()}
    config = WeightingConfig(max_steps=40) if mode == "frozen" else WeightingConfig(
        max_steps=120, predictor_mode="lora", lr=1e-3, num_prefix_lengths=2, predictor_lr=1e-3)
    fit = fit_weighting_module(examples, pretrained_t5_predictor.get_input_embeddings(), pretrained_t5_predictor,
                               config, CUE, progress=False)
    weights = predict_token_weights(fit.module, [e.rationale_ids for e in examples])
    digit, filler = class_means(weights, examples)
    assert digit > 0.9 and filler < 0.2, (digit, filler)
    after = pretrained_t5_predictor.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # LoRA trains a copy; frozen trains nothing
    if mode == "lora":
        assert type(fit.predictor).__name__ == "PeftModelForSeq2SeqLM"


def test_the_weighting_predictor_reads_the_targets_own_cue_and_answer_format(smol_tokenizer):
    from kpod.curriculum.stages import answer_cue_ids, weighting_examples
    from kpod.data.prompts import DEFAULT_TARGET, answer_statement
    from kpod.data.records import Question
    from kpod.distill.examples import EncodedExample

    assert answer_statement(DEFAULT_TARGET) == (" Therefore, the answer is", " {answer}.")
    template = "Reasoning: {rationale}\nSo the answer is: {answer}!"
    assert answer_statement(template) == ("\nSo the answer is:", " {answer}!")
    with pytest.raises(ValueError, match="after"):
        answer_statement("{answer} because {rationale}")
    tok = smol_tokenizer
    example = EncodedExample("q1#t#0", "q1", tok("Q: x? A:").input_ids, tok(" 2 + 3 = 5.").input_ids, [(0, 6)], 6)
    questions = {"q1": Question(id="q1", question="x?", answer="5", dataset="custom")}
    (default,) = weighting_examples(tok, [example], questions)
    (custom,) = weighting_examples(tok, [example], questions, template=template)
    assert default.answer_ids == tok(" 5.", add_special_tokens=False).input_ids
    assert custom.answer_ids == tok(" 5!", add_special_tokens=False).input_ids
    assert answer_cue_ids(tok, template=template) == tok("\nSo the answer is:", add_special_tokens=False).input_ids
