"""Batched greedy generation: same outputs as one-at-a-time, per-sequence stopping, no wasted decoding."""

from __future__ import annotations

import warnings

import pytest
import torch

from kpod.evaluation.generate import ANSWER_DONE, StopRule, generate, stop_token_ids, trim_output
from kpod.models import build_tiny_model


def test_answer_sentence_detection():
    assert ANSWER_DONE.search("So 2+3=5. Therefore, the answer is 5. Q")
    assert ANSWER_DONE.search("the answer is 5.\n")
    assert not ANSWER_DONE.search("Therefore, the answer is 3.")  # might still become 3.5
    assert not ANSWER_DONE.search("Therefore, the answer is 3.5")
    assert StopRule({0}).finished("blah\nQ: next")
    assert not StopRule({0}, stop_at_answer=False).finished("the answer is 5. And")
    assert trim_output("x. The answer is 5. And more") == "x. The answer is 5."
    assert trim_output("x = 2.\n\nQ: made up") == "x = 2."


def test_prose_that_says_answer_is_neither_stops_nor_cuts_the_output():
    rule = StopRule({0})
    assert not rule.finished("240. However, this answer is incorrect. L")
    assert not rule.finished("Another way to verify the answer is to note that 25 + 20 gives 45. T")
    text = "25 + 20 = 45. Another way to check the answer is to note that 20 + 25 = 45. Therefore, the answer is 45. Q"
    assert trim_output(text) == text[:-2]
    for done in ("The answer is $1,234. M", "The answer is (B). M", "The answer is B. M", "The answer is: **45**. M",
                 "The answer is \u22123. M", "Therefore, the answer is library. M", "answer is 45 apples. M"):
        assert rule.finished(done), done
    assert not rule.finished("the answer is library. M")  # no number or letter: generation goes on


def test_batched_equals_one_at_a_time_and_computes_only_useful_tokens(smol_tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model("llama", smol_tokenizer, seed=3)
    prompts = ["Q: 1 + 1?\nA:", "Q: A much longer question about apples and pears and more?\nA:", "Q: x?\nA:",
               "Q: How many?\nA: Let's think step by step."]
    one, s1 = generate(model, smol_tokenizer, prompts, batch_size=1, max_new_tokens=12, progress=False)
    with warnings.catch_warnings():  # the KV-cache loop must use this transformers' own argument names
        warnings.simplefilter("error", FutureWarning)
        many, s4 = generate(model, smol_tokenizer, prompts, batch_size=4, max_new_tokens=12, progress=False)
    assert one == many
    assert s4["useful_tokens"] == s1["useful_tokens"] == s4["computed_tokens"]


def test_finished_sequences_leave_the_batch(smol_tokenizer):
    """Make one prompt stop at once (its next token is forced to be the end token) and the others run on."""
    model = build_tiny_model("llama", smol_tokenizer, seed=3)
    eos = smol_tokenizer.eos_token_id
    with torch.no_grad():  # bias the head so that after the token "STOP" the end token wins
        model.lm_head.weight[eos] += 50 * model.model.embed_tokens.weight[smol_tokenizer.convert_tokens_to_ids("STOP")]
    prompts = ["Q: go on\nA:", "Q: now STOP"]
    outs, stats = generate(model, smol_tokenizer, prompts, batch_size=2, max_new_tokens=10, progress=False)
    assert stats["useful_tokens"] == stats["computed_tokens"]
    assert stats["computed_tokens"] < 2 * 10


def test_seq2seq_generation_runs(smol_tokenizer):
    model = build_tiny_model("t5", smol_tokenizer)
    outs, stats = generate(model, smol_tokenizer, ["Q: 1 + 1?", "Q: 2?"], batch_size=2, max_new_tokens=5,
                           progress=False)
    assert len(outs) == 2 and stats["useful_tokens"] <= 10


def _contrastive_by_full_recompute(model, tokenizer, prompt: str, contrast: str, strength: float, n: int) -> list[int]:
    """Reference: every step re-reads both whole contexts (no cache, no padding) and takes the best contrastive score."""
    main, other, picked = tokenizer(prompt).input_ids, tokenizer(contrast).input_ids, []
    with torch.no_grad():
        for _ in range(n):
            a = model(input_ids=torch.tensor([main + picked])).logits[0, -1]
            b = model(input_ids=torch.tensor([other + picked])).logits[0, -1]
            picked.append(int((torch.log_softmax(a, -1) - strength * torch.log_softmax(b, -1)).argmax()))
            if picked[-1] in stop_token_ids(tokenizer):
                break
    return picked


def test_contrastive_decoding_matches_a_full_recompute_and_is_greedy_at_strength_zero(smol_tokenizer):
    model = build_tiny_model("llama", smol_tokenizer, seed=5)
    prompts = ["Q: 2 + 3? The answer is 5.\nA:", "Q: A longer question about seven apples? The answer is 7.\nA:"]
    contrasts = ["Q: 2 + 3? The answer is 9.\nA:", "Q: A longer question about seven apples? The answer is 12.\nA:"]
    greedy, _ = generate(model, smol_tokenizer, prompts, max_new_tokens=8, progress=False, stop_at_answer=False)
    same, _ = generate(model, smol_tokenizer, prompts, max_new_tokens=8, progress=False, stop_at_answer=False,
                       contrast_prompts=contrasts, contrast_strength=0.0)
    assert same == greedy
    texts, stats = generate(model, smol_tokenizer, prompts, batch_size=2, max_new_tokens=8, progress=False,
                            stop_at_answer=False, contrast_prompts=contrasts, contrast_strength=1.0,
                            return_token_counts=True)
    for prompt, contrast, text in zip(prompts, contrasts, texts):
        expected = _contrastive_by_full_recompute(model, smol_tokenizer, prompt, contrast, 1.0, 8)
        assert len(expected) > 2 and text == smol_tokenizer.decode(expected, skip_special_tokens=True).rstrip()
    assert texts != greedy  # the contrast changed what was picked
    assert stats["computed_tokens"] == 2 * sum(stats["new_tokens"])  # both contexts advance each step


def test_contrastive_decoding_refuses_mismatched_or_seq2seq_input(smol_tokenizer):
    causal = build_tiny_model("llama", smol_tokenizer, seed=5)
    with pytest.raises(ValueError, match="1 contrast prompts for 2 prompts"):
        generate(causal, smol_tokenizer, ["a", "b"], contrast_prompts=["c"], progress=False)
    seq2seq = build_tiny_model("t5", smol_tokenizer)
    with pytest.raises(ValueError, match="decoder-only"):
        generate(seq2seq, smol_tokenizer, ["a"], contrast_prompts=["c"], progress=False)
