"""kpod's cheaper CPU LoRA dropout: the mask of nn.Dropout in distribution (rate, scale, independence), seeded, and
swapped into every LoRA branch by the trainer; eval mode and GPUs are untouched."""

from __future__ import annotations

import pytest
import torch

from kpod.config import RunConfig, TrainConfig
from kpod.distill.dropout import FastDropout, drop_positions, use_fast_lora_dropout
from kpod.models import add_lora, build_tiny_model

TARGETS = ["q_proj", "v_proj", "gate_proj"]


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_mask_has_the_drop_rate_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(500, 2000)
    y = FastDropout(p).train()(x)
    dropped = (y == 0).float()
    n = x.numel()
    assert abs(dropped.mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5  # within 5 standard errors
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))  # kept elements scaled as nn.Dropout does
    assert abs(y.mean().item() - 1) < 0.01
    # Neighbours (the two int32 halves of one 64-bit draw) are independent: their joint drop rate is p^2.
    pairs = dropped.view(-1, 2)
    both = (pairs[:, 0] * pairs[:, 1]).mean().item()
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / (n / 2)) ** 0.5


def test_drop_positions_cover_the_whole_range_when_drawn_in_many_chunks():
    torch.manual_seed(0)
    n, p = 20_000, 0.3
    pos = drop_positions(n, p, per_draw=100)  # about 60 chunks
    assert pos.dtype == torch.long and (pos.diff() > 0).all() and 0 <= pos.min() and pos.max() < n
    assert abs(len(pos) / n - p) < 5 * (p * (1 - p) / n) ** 0.5
    last_half = (pos >= n // 2).sum().item() / (n / 2)  # later chunks are not short of drops
    assert abs(last_half - p) < 5 * (p * (1 - p) / (n / 2)) ** 0.5
    assert len(drop_positions(0, p)) == 0 and len(drop_positions(100, 0.0)) == 0


def test_mask_is_seeded_and_passes_gradients_through_kept_elements():
    x = torch.randn(64, 33, requires_grad=True)  # odd element count: the last draw is half used
    d = FastDropout(0.3).train()
    torch.manual_seed(1)
    y1 = d(x)
    torch.manual_seed(1)
    assert torch.equal(y1, d(x))
    y1.sum().backward()
    kept = y1.detach() != 0
    assert torch.allclose(x.grad[kept], torch.tensor(1 / 0.7)) and (x.grad[~kept] == 0).all()
    assert torch.equal(d.eval()(x), x)  # eval mode: identity
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_every_lora_branch_gets_the_fast_mask_and_eval_outputs_do_not_change(smol_tokenizer):
    model = add_lora(build_tiny_model("llama", smol_tokenizer, seed=0), 4, 8, 0.05, TARGETS)
    ids = torch.randint(0, 1000, (2, 12))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert use_fast_lora_dropout(model) == 2 * len(TARGETS)  # 2 layers x 3 targets
    kinds = {type(m.lora_dropout["default"]) for m in model.modules() if hasattr(m, "lora_dropout")}
    assert kinds == {FastDropout}
    with torch.no_grad():
        assert torch.equal(before, model(input_ids=ids).logits)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        train_logits = model(input_ids=ids).logits
    # LoRA B starts at zero, so dropout cannot show in the output yet; the branch inputs do see the mask.
    branch = next(m for m in model.modules() if hasattr(m, "lora_dropout")).lora_dropout["default"]
    assert torch.equal(train_logits, before) and (branch(torch.ones(100, 100)) == 0).any()
    # Without LoRA dropout (p = 0: peft puts nn.Identity) there is nothing to replace.
    plain = add_lora(build_tiny_model("llama", smol_tokenizer, seed=0), 4, 8, 0.0, TARGETS)
    assert use_fast_lora_dropout(plain) == 0


def test_the_trainer_uses_it_unless_told_not_to(smol_tokenizer, tmp_path):
    from kpod.data.datasets import load_split
    from kpod.data.rationales import import_rationales
    from kpod.distill.dataset import DistillDataset
    from kpod.distill.examples import encode_examples
    from kpod.distill.trainer import build_trainer

    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = import_rationales("svamp", "gpt35")[0][:2]
    dataset = DistillDataset(encode_examples(smol_tokenizer, questions, rationales, progress=False)[0])
    for fast in (True, False):
        model = add_lora(build_tiny_model("llama", smol_tokenizer, seed=0), 4, 8, 0.05, TARGETS)
        cfg = TrainConfig(epochs=1, batch_size=2, fast_lora_dropout=fast)
        build_trainer(model, smol_tokenizer, dataset, cfg, tmp_path / str(fast), seed=0)
        kinds = {type(m.lora_dropout["default"]) for m in model.modules() if hasattr(m, "lora_dropout")}
        assert kinds == ({FastDropout} if fast else {torch.nn.Dropout})


def test_finished_experiment_cells_keep_their_fingerprint_when_the_option_is_off():
    """The option came after experiment cells were fingerprinted: off, it leaves the fingerprints as they were;
    on (the default), it is part of them, since it changes the random numbers."""
    off = RunConfig.model_validate({"train": {"fast_lora_dropout": False}})
    on = RunConfig()
    assert "fast_lora_dropout" not in off.fingerprint_dump()["train"]
    assert on.fingerprint_dump()["train"]["fast_lora_dropout"] is True
    assert "fast_lora_dropout" not in off.train.fingerprint_fields()
    assert on.train.fingerprint_fields()["fast_lora_dropout"] is True
