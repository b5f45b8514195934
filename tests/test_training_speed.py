"""The training speed options keep the loss what it was: sequence packing, torch.compile; and the epoch log."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpod.config import ConfigError, RunConfig, TrainConfig
from kpod.data.datasets import load_split
from kpod.data.rationales import import_rationales
from kpod.distill.dataset import IGNORE, DistillDataset, PackingCollator, PadCollator, hide_given_steps
from kpod.distill.examples import encode_examples
from kpod.distill.loss import causal_lm_loss, supervised_logits
from kpod.distill.trainer import build_trainer, run_training
from kpod.models import build_tiny_model


@pytest.fixture(scope="module")
def examples(smol_tokenizer):
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][:16]
    return encode_examples(smol_tokenizer, questions, rationales, max_length=384, progress=False)[0]


def _weighted_dataset(examples):
    weights = [np.random.RandomState(i).rand(e.answer_start).astype(np.float32) for i, e in enumerate(examples)]
    return DistillDataset(examples, token_weights=weights)


def test_packing_places_every_example_once_within_the_row_limit(examples, smol_tokenizer):
    ds = DistillDataset(examples[:8])
    limit = max(ds.lengths[:8]) + 40
    batch = PackingCollator(smol_tokenizer.pad_token_id, limit)([ds[i] for i in range(8)])
    assert batch["input_ids"].shape[0] < 8 and batch["input_ids"].shape[1] <= limit  # fewer rows than examples
    assert int(batch["num_tokens"]) == sum(ds.lengths[:8])
    for k in range(8):
        r, at, n = int(batch["row"][k]), int(batch["offset"][k]), ds.lengths[k]
        assert batch["input_ids"][r, at: at + n].tolist() == ds[k]["input_ids"]
        assert batch["position_ids"][r, at: at + n].tolist() == list(range(n))  # positions restart per example
    spans = sorted((int(batch["row"][k]), int(batch["offset"][k]), ds.lengths[k]) for k in range(8))
    for (r1, a1, n1), (r2, a2, _) in zip(spans, spans[1:]):
        assert r1 != r2 or a1 + n1 <= a2  # no two examples overlap
    # An example longer than the limit still gets a row of its own.
    tiny = PackingCollator(smol_tokenizer.pad_token_id, 16)([ds[i] for i in range(3)])
    assert tiny["input_ids"].shape[0] == 3


def test_packed_batch_gives_the_padded_loss_and_gradients(examples, smol_tokenizer):
    """Same examples, same given steps: packing changes only where tokens sit, not the loss. A packed row whose
    examples could see each other (no block-diagonal attention) would change every later example's logits."""
    model = build_tiny_model("llama", smol_tokenizer, seed=3)
    ds = _weighted_dataset(examples[:6])
    items = [ds[i] for i in range(6)]
    given = [min(g, examples[i].n_steps - 1) for i, g in enumerate([1, 0, 2, 0, 1, 3])]
    first = ds.first_supervised(range(6), given)
    padded = hide_given_steps(PadCollator(smol_tokenizer.pad_token_id)(items), first)
    packed = hide_given_steps(PackingCollator(smol_tokenizer.pad_token_id, 2048)(items), first)
    assert packed["input_ids"].shape[0] == 1  # all six in one row: the harshest case for attention separation
    assert (packed["labels"] != IGNORE).sum() == (padded["labels"] != IGNORE).sum()
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        loss = causal_lm_loss(model, batch, "weights")
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (l_pad, g_pad), (l_pack, g_pack) = grads
    assert torch.allclose(l_pad, l_pack, atol=1e-5), (l_pad, l_pack)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_pad, g_pack))

    # Per token too; and without the position ids the examples attend to each other and the tokens' losses move
    # (a random tiny model's mean loss hardly does), so this check can fail.
    def token_nll(batch):
        logits, targets, _ = supervised_logits(model, batch)
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none").detach()

    leaky = {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}
    leaky.pop("position_ids")
    reference = torch.sort(token_nll(padded)).values
    assert (torch.sort(token_nll(packed)).values - reference).abs().max() < 1e-4
    assert (torch.sort(token_nll(leaky)).values - reference).abs().max() > 1e-2


def test_trainer_with_packing_matches_padded_training(examples, smol_tokenizer, tmp_path):
    losses = {}
    for packing in (False, True):
        cfg = TrainConfig(epochs=1, batch_size=4, lr=3e-3, warmup_steps=0, save_steps=100, logging_steps=1,
                          group_by_length=False, packing=packing, packing_max_tokens=700)
        model = build_tiny_model("llama", smol_tokenizer, seed=0)
        trainer = build_trainer(model, smol_tokenizer, DistillDataset(examples[:12]), cfg, tmp_path / str(packing), seed=0)
        summary = run_training(trainer, tmp_path / str(packing), tmp_path / f"final-{packing}")
        losses[packing] = [row["loss"] for row in summary["loss_curve"]]
        assert summary["tokens_this_run"] == sum(DistillDataset(examples[:12]).lengths)  # pads never counted
    assert np.allclose(losses[False], losses[True], atol=1e-3), losses


def test_packing_is_refused_where_it_would_mix_examples():
    with pytest.raises(ValueError, match="packing"):
        RunConfig.model_validate({"train": {"method": "mcc_kd", "packing": True, "batch_size": 8},
                                  "data": {"rationales_per_question": None}})
    RunConfig.model_validate({"train": {"method": "kpod", "packing": True}})


def test_epoch_log_records_time_and_memory_per_epoch(examples, smol_tokenizer, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-3, warmup_steps=0, save_steps=100, logging_steps=1)
    model = build_tiny_model("llama", smol_tokenizer, seed=0)
    trainer = build_trainer(model, smol_tokenizer, DistillDataset(examples[:8]), cfg, tmp_path / "t", seed=0)
    summary = run_training(trainer, tmp_path / "t", tmp_path / "final")
    log = summary["epoch_log"]
    assert [round(e["epoch"]) for e in log] == [1, 2, 3]
    assert all(e["wall_s"] >= 0 and e["rss_mb"] > 0 and e["peak_rss_mb"] >= e["rss_mb"] * 0.5 for e in log)


def test_compiled_backbone_gives_the_same_loss(examples, smol_tokenizer, tmp_path):
    """torch.compile is an option of the trainer: the same first-step loss as eager (it needs a C++ compiler)."""
    first = {}
    for compile_ in (False, True):
        torch._dynamo.reset()
        cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, warmup_steps=0, save_steps=100, logging_steps=1,
                          group_by_length=False, torch_compile=compile_)
        model = build_tiny_model("llama", smol_tokenizer, seed=0)
        trainer = build_trainer(model, smol_tokenizer, DistillDataset(examples[:8]), cfg, tmp_path / str(compile_), seed=0)
        trainer.args.max_steps = 2
        summary = run_training(trainer, tmp_path / str(compile_), tmp_path / f"final-{compile_}")
        first[compile_] = [row["loss"] for row in summary["loss_curve"]]
    assert np.allclose(first[False], first[True], atol=1e-4), first


def test_global_batch_and_packing_are_config_options():
    cfg = TrainConfig(packing=True, torch_compile=True)
    assert cfg.fingerprint_fields()["packing"] is True
    assert "packing" not in TrainConfig().fingerprint_fields()  # old runs keep their cached stages
    with pytest.raises((ValueError, ConfigError)):
        TrainConfig(packing_max_tokens=4)
