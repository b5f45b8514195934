"""Training options for scaling out: the global batch (grad_accum derived from the processes), precision and gradient
checkpointing reach the Trainer's arguments; defaults leave earlier runs' fingerprints and arguments unchanged."""

from __future__ import annotations

import pytest

from kpod.config import ConfigError, RunConfig, TrainConfig, load_config
from kpod.distill.trainer import training_arguments


def test_global_batch_sets_grad_accum_per_world_size():
    cfg = TrainConfig(batch_size=2, global_batch_size=16)
    assert [cfg.accumulation_steps(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="16 is not a multiple of train.batch_size 2 x 3 processes = 6"):
        cfg.accumulation_steps(3)
    with pytest.raises(ConfigError, match="2 x 16 processes = 32"):
        cfg.accumulation_steps(16)  # a global batch smaller than one step of every process
    assert TrainConfig(grad_accum=3).accumulation_steps(8) == 3  # no global batch: grad_accum as given


def test_global_batch_errors_name_the_fields(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  batch_size: 4\n  global_batch_size: 10\n")
    with pytest.raises(ConfigError, match="global_batch_size 10 is not a multiple of train.batch_size 4"):
        load_config(path)
    path.write_text("train:\n  grad_accum: 2\n  global_batch_size: 8\n")
    with pytest.raises(ConfigError, match="not both"):
        load_config(path)
    path.write_text("train:\n  precision: fp64\n")
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(path)


def test_options_reach_the_training_arguments(tmp_path):
    args = training_arguments(TrainConfig(batch_size=2, global_batch_size=8, precision="bf16",
                                          gradient_checkpointing=True), tmp_path, seed=0, use_cpu=True)
    assert args.gradient_accumulation_steps == 4 and args.per_device_train_batch_size == 2
    assert args.bf16 and not args.fp16 and args.mixed_precision == "bf16"
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_precision_auto_follows_the_launcher_and_fp32_overrides_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch` with a bf16 config sets
    assert training_arguments(TrainConfig(), tmp_path, seed=0, use_cpu=True).mixed_precision == "bf16"
    assert training_arguments(TrainConfig(precision="fp32"), tmp_path, seed=0, use_cpu=True).mixed_precision == "no"


def test_defaults_keep_arguments_and_fingerprints(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    args = training_arguments(TrainConfig(), tmp_path, seed=0, use_cpu=True)
    assert args.gradient_accumulation_steps == 1 and args.mixed_precision == "no"
    assert not (args.bf16 or args.fp16 or args.activation_checkpointing)
    # Options added for scaling out stay out of a stage's fingerprint at their defaults (cached runs stay cached)...
    fields = RunConfig().train.fingerprint_fields()
    assert not {"global_batch_size", "precision", "gradient_checkpointing"} & set(fields)
    # ...and count once they are set.
    assert TrainConfig(precision="bf16").fingerprint_fields()["precision"] == "bf16"


def test_later_weighting_options_stay_out_of_fingerprints_at_their_old_values():
    """The score-function estimator came after weights were cached and grids reported: at the Gumbel-Softmax default
    every stage and cell fingerprint is what it was, and choosing it changes them."""
    from kpod.pipeline import fingerprint

    default, score = RunConfig(), RunConfig.model_validate({"kpod": {"weighting": {"gradient_estimator": "score_function"}}})
    assert default.kpod.weighting.model_dump()["gradient_estimator"] == "gumbel_softmax"  # saved with the run
    later = {"gradient_estimator", "score_function_samples"}
    assert not later & set(default.kpod.fingerprint_fields()["weighting"])
    assert not later & set(default.fingerprint_dump()["kpod"]["weighting"])
    assert score.fingerprint_dump()["kpod"]["weighting"]["gradient_estimator"] == "score_function"
    assert fingerprint(default.kpod.weighting) != fingerprint(score.kpod.weighting)
    assert fingerprint(default.kpod) != fingerprint(score.kpod)


def test_cutting_answer_statements_is_the_default_and_grids_that_keep_them_keep_their_fingerprints():
    """data.strip_answer_statement came after the grids ran: pinned to false (how kpod read rationales before it),
    a stage and a cell have the fingerprints they had; the new default, true, changes them."""
    from kpod.pipeline import fingerprint

    new, old = RunConfig(), RunConfig.model_validate({"data": {"strip_answer_statement": False}})
    assert new.data.strip_answer_statement
    assert "strip_answer_statement" not in old.data.fingerprint_fields()
    assert "strip_answer_statement" not in old.fingerprint_dump()["data"]
    assert new.fingerprint_dump()["data"]["strip_answer_statement"] is True
    assert fingerprint(new.data) != fingerprint(old.data)


def test_gradient_checkpointing_with_lora_and_accumulation_gives_the_same_losses(smol_tokenizer, tmp_path):
    from kpod.data.datasets import load_split
    from kpod.data.rationales import import_rationales
    from kpod.distill.dataset import DistillDataset
    from kpod.distill.examples import encode_examples
    from kpod.distill.trainer import build_trainer, run_training
    from kpod.models import add_lora, build_tiny_model

    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][:8]
    examples, _ = encode_examples(smol_tokenizer, questions, rationales, progress=False)
    curves = []
    for checkpointing in (False, True):
        model = add_lora(build_tiny_model("llama", smol_tokenizer, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"])
        cfg = TrainConfig(epochs=1, batch_size=2, global_batch_size=4, lr=1e-3, warmup_steps=0, save_steps=100,
                          logging_steps=1, gradient_checkpointing=checkpointing)
        out = tmp_path / f"checkpointing-{checkpointing}"
        trainer = build_trainer(model, smol_tokenizer, DistillDataset(examples), cfg, out, seed=0)
        summary = run_training(trainer, out, out / "final")
        assert trainer.model.get_base_model().is_activation_checkpointing == checkpointing
        assert summary["grad_accum"] == 2 and summary["global_steps"] == 2
        curves.append([row["loss"] for row in summary["loss_curve"]])
    assert curves[1] == pytest.approx(curves[0], abs=1e-5)
