"""The baselines: their loss math on random logits, their data preparation, a few training steps of each trainer on a
tiny random student, and `kpod run` end to end for the two that need more than a loss (SCOTT, MCC-KD)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kpod.baselines import MethodContext, get_method, method_names
from kpod.baselines.common import SupervisedTokens, supervised_tokens, weighted_mean
from kpod.baselines.mcc_kd import (
    MccKdTrainer,
    QuestionPairSampler,
    bidirectional_kl,
    consistency_loss,
    js_divergence,
    pair_rows,
)
from kpod.baselines.scott import (
    ScottTrainer,
    counterfactual_choice_text,
    counterfactual_number_text,
    counterfactual_rationales,
    perturb_number,
    scott_loss,
    teacher_counterfactuals,
)
from kpod.baselines.specialized_kd import answer_only, mix_formats
from kpod.cli import main
from kpod.config import ConfigError, RunConfig, SpecializedKdSettings, TrainConfig, load_config
from kpod.data.datasets import load_split
from kpod.data.rationales import import_rationales
from kpod.data.records import Rationale
from kpod.distill.dataset import DistillDataset, PadCollator
from kpod.distill.examples import encode_examples
from kpod.distill.trainer import build_trainer, run_training
from kpod.models import build_tiny_model
from kpod.paths import RunPaths


@pytest.fixture(scope="module")
def questions():
    return {q.id: q for q in load_split("svamp", "train")}


@pytest.fixture(scope="module")
def multi_examples(smol_tokenizer, questions):
    """All 3 rationales of 4 questions (12 examples), question by question."""
    rationales = import_rationales("svamp", "gpt35")[0]
    ids = list(dict.fromkeys(r.id for r in rationales))[:4]
    examples, _ = encode_examples(smol_tokenizer, questions, [r for r in rationales if r.id in ids], progress=False)
    assert len(examples) == 12
    return examples


def _logits(seed, n=5, v=11):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- loss math
def test_divergences_match_their_definitions():
    a, b = _logits(0), _logits(1)
    p, q = a.softmax(-1), b.softmax(-1)
    kl = lambda x, y: (x * (x / y).log()).sum(-1)  # noqa: E731
    assert torch.allclose(bidirectional_kl(a, b), (kl(p, q) + kl(q, p)).mean(), atol=1e-5)
    m = (p + q) / 2
    assert torch.allclose(js_divergence(a, b), ((kl(p, m) + kl(q, m)) / 2).mean(), atol=1e-5)
    assert torch.allclose(bidirectional_kl(a, b), bidirectional_kl(b, a))
    assert bidirectional_kl(a, a).abs() < 1e-6 and js_divergence(a, a).abs() < 1e-6
    assert 0 < js_divergence(a, b) <= np.log(2)


def test_scott_loss_is_factual_plus_weighted_counterfactual():
    nll, w = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 0.5, 1.0, 2.0])
    cf = torch.tensor([False, False, True, True])
    total, factual, counter = scott_loss(nll, w, cf, weight=0.5, normalization="tokens")
    assert factual.item() == pytest.approx((1 + 1) / 2) and counter.item() == pytest.approx((3 + 8) / 2)
    assert total.item() == pytest.approx(1 + 0.5 * 5.5)
    _, factual_w, _ = scott_loss(nll, w, cf, weight=0.5, normalization="weights")
    assert factual_w.item() == pytest.approx(2 / 1.5)
    total, _, counter = scott_loss(nll, w, torch.zeros(4, dtype=torch.bool), weight=3.0)
    assert counter.item() == 0 and total.item() == pytest.approx(weighted_mean(nll, w, "tokens").item())


def test_consistency_pairs_rationales_of_one_question_on_their_answer_tokens():
    assert pair_rows([7, 7, 3, 7, 3], [0, 1, 2, 3, 4]) == [(0, 1), (3, 0), (2, 4)]
    assert pair_rows([1, 1], [5, 5]) == []  # the same example twice is no pair
    # Two rows: row 0 has rationale tokens at offsets 0-2 and answer tokens 3-4, row 1 rationale 0-1, answer 2-3.
    logits = _logits(2, n=9)
    tokens = SupervisedTokens(logits, torch.tensor([5, 6, 7, 8, 9, 1, 2, 8, 9]), torch.ones(9),
                              rows=torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1]),
                              offsets=torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]))
    got = consistency_loss(tokens, [(0, 1)], answer_start=[3, 2])
    assert torch.allclose(got, bidirectional_kl(logits[[3, 4]], logits[[7, 8]]))
    assert consistency_loss(tokens, [], answer_start=[3, 2]).item() == 0


def test_pair_sampler_keeps_pairs_together_every_epoch():
    qids = ["a", "a", "a", "b", "b", "c", "d", "e", "e", "e", "e"]
    sampler = QuestionPairSampler(qids, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == 12  # a: 3 + 1 repeated, b: 2, e: 4, singles c and d: 2
        assert set(order) == set(range(len(qids)))
        pairs = [(order[k], order[k + 1]) for k in range(0, len(order), 2)]
        for x, y in pairs:
            assert qids[x] == qids[y] or (qids[x] in "cd" and qids[y] in "cd")
        orders.append(order)
    assert orders[0] != orders[1]
    sampler.set_epoch(0)
    assert list(sampler) == orders[0]  # seeded per epoch: a resumed epoch sees the same order


def test_pair_sampler_groups_pairs_of_similar_length():
    """Length grouping keeps every pair of one question together and the same indices, and cuts the padding that
    random pairs cost (a batch is padded to its longest rationale)."""
    rng = np.random.default_rng(0)
    qids = [f"q{i // 2}" for i in range(400)]  # 200 questions with 2 rationales each
    lengths = [int(n) for n in rng.integers(40, 400, size=100).repeat(4)]  # both rationales of a question alike
    plain = QuestionPairSampler(qids, seed=1)
    grouped = QuestionPairSampler(qids, seed=1, lengths=lengths, pairs_per_batch=4)

    def padded_tokens(order):
        batches = [order[k:k + 8] for k in range(0, len(order), 8)]
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    for epoch in range(2):
        plain.set_epoch(epoch), grouped.set_epoch(epoch)
        order = list(grouped)
        assert sorted(order) == sorted(plain) == list(range(400))
        assert all(qids[order[k]] == qids[order[k + 1]] for k in range(0, len(order), 2))
        assert padded_tokens(order) < 0.8 * padded_tokens(list(plain))
    grouped.set_epoch(0)
    first = list(grouped)
    grouped.set_epoch(1)
    assert list(grouped) != first
    grouped.set_epoch(0)
    assert list(grouped) == first  # seeded per epoch
    with pytest.raises(ValueError, match="together"):
        QuestionPairSampler(qids, lengths=lengths)
    with pytest.raises(ValueError, match="lengths for"):
        QuestionPairSampler(qids, lengths=lengths[:-1], pairs_per_batch=4)


# ----------------------------------------------------------------------------- data preparation
def test_counterfactual_text_swaps_the_answer_by_value():
    text = "He had 1,000 apples and gave 12. So he kept 1000 - 12 = 988. Finally 988."
    assert counterfactual_number_text(text, "988", "990") == "He had 1,000 apples and gave 12. So he kept 1000 - 12 = 990. Finally 990."
    assert counterfactual_number_text(text, "1000", "7").startswith("He had 7 apples")
    assert counterfactual_number_text("It costs 2.5 dollars, not 25.", "2.5", "3") == "It costs 3 dollars, not 25."
    assert counterfactual_number_text(text, "13", "14") is None
    out = counterfactual_choice_text("A dog barks, so the answer is (b) dog.", "B", "D", ["cat", "dog", "cow", "fox"])
    assert out == "A fox barks, so the answer is (d) fox."
    rng = np.random.default_rng(0)
    for answer in ["0", "1", "7", "250", "2.5"]:
        new = [perturb_number(answer, rng) for _ in range(20)]
        assert all(n != answer and float(n) >= 0 for n in new)
    below = [float(perturb_number("-30", rng)) for _ in range(40)]  # a negative answer moves either way
    assert min(below) < -30 < max(below) and all(abs(v + 30) <= 15 for v in below)


def test_counterfactual_text_swaps_every_mention_of_the_answer():
    # a comma after the answer is punctuation: "15," is the answer too, not part of a longer number
    assert counterfactual_number_text("He had 15, so the total is 15.", "15", "16") == "He had 16, so the total is 16."
    assert counterfactual_number_text("$1,000, that is 1,000.", "1000", "1001") == "$1001, that is 1001."
    assert counterfactual_number_text("So 10,5 or 1,234.", "5", "6") is None  # digits after a comma: not 5
    # a negative answer, written with a minus where no number precedes it; "5-47" subtracts 47
    text = "x = -47, then 5-47 = -42. So -47."
    assert counterfactual_number_text(text, "-47", "-45") == "x = -45, then 5-47 = -42. So -45."
    assert counterfactual_number_text(text, "47", "48") == "x = -47, then 5-48 = -42. So -47."
    # an option's text is edited as a word (or its plural), not inside another word
    out = counterfactual_choice_text("A bedroom has a bed; beds go in (a) bed.", "A", "B", ["bed", "sofa"])
    assert out == "A bedroom has a sofa; sofas go in (b) sofa."


def test_counterfactual_rationales_reach_a_perturbed_answer(questions):
    rationales = [r for r in import_rationales("svamp", "gpt35")[0]][:30]
    cf_q, cf_r, counts = counterfactual_rationales(questions, rationales, "number", seed=0)
    assert counts["counterfactual_rationales"] == len(cf_r) > 20
    assert len(cf_r) + counts["answer_not_in_rationale"] == 30
    for r in cf_r:
        assert r.answer == cf_q[r.id].answer != questions[r.id].answer
        assert r.answer in r.rationale and r.meta["counterfactual_of"]
    again = counterfactual_rationales(questions, rationales, "number", seed=0)[1]
    assert [r.rationale for r in again] == [r.rationale for r in cf_r]


def test_specialized_kd_mixes_zero_shot_and_in_context_formats(multi_examples):
    sep = [1116]
    same, report = mix_formats(multi_examples, SpecializedKdSettings(in_context_fraction=0), sep, seed=0)
    assert same == multi_examples and report["formats"] == {"zero_shot_cot": 12}
    icl, report = mix_formats(multi_examples, SpecializedKdSettings(in_context_fraction=1, demonstrations=2), sep, 0)
    assert report["formats"] == {"in_context_cot": 12}
    for ex, out in zip(multi_examples, icl):
        assert out.target_ids == ex.target_ids and out.prompt_ids[-len(ex.prompt_ids):] == ex.prompt_ids
        assert len(out.prompt_ids) > len(ex.prompt_ids) + 2 * len(sep)
        assert out.prompt_ids.count(sep[0]) >= 2
        assert ex.prompt_ids not in [out.prompt_ids[: len(ex.prompt_ids)]]  # a demonstration is another question
    short = SpecializedKdSettings(in_context_fraction=1, demonstrations=2, max_length=max(len(e) for e in multi_examples) + 5)
    _, report = mix_formats(multi_examples, short, sep, 0)
    assert report["formats"].get("in_context_cot_fell_back_to_zero_shot", 0) > 0
    ans, report = mix_formats(multi_examples, SpecializedKdSettings(in_context_fraction=0, answer_only_fraction=1), sep, 0)
    assert report["formats"] == {"zero_shot_answer": 12}
    assert all(a.target_ids == e.target_ids[e.answer_start:] and a.step_spans == [] for a, e in zip(ans, multi_examples))
    assert answer_only(multi_examples[0]).answer_start == 0


def test_specialized_kd_demonstrations_leave_out_their_special_tokens():
    from kpod.baselines.specialized_kd import with_demonstrations
    from kpod.distill.examples import EncodedExample

    BOS, EOS, SEP = 1, 2, 9  # as a tokenizer that opens every prompt with BOS (Gemma) and ends targets with EOS
    ex = EncodedExample("a#t#0", "a", [BOS, 10, 11], [12, 13, EOS], [(0, 1)], 1)
    demo = EncodedExample("b#t#0", "b", [BOS, 20, 21], [22, 23, EOS], [(0, 1)], 1)
    out = with_demonstrations(ex, [demo, demo], [SEP], frozenset({BOS, EOS}))
    assert out.prompt_ids == [BOS, 20, 21, 22, 23, SEP, 20, 21, 22, 23, SEP, 10, 11] and out.target_ids == ex.target_ids
    t5_like = EncodedExample("c#t#0", "c", [30, 31, EOS], [32, EOS], [(0, 1)], 1)  # a T5 prompt ends with "</s>"
    assert with_demonstrations(ex, [t5_like], [SEP], frozenset({BOS, EOS})).prompt_ids == [BOS, 30, 31, 32, SEP, 10, 11]
    assert with_demonstrations(ex, [demo], [SEP]).prompt_ids == [BOS, 20, 21, 22, 23, SEP, BOS, 10, 11]  # none named


def test_supervised_tokens_know_row_and_target_offset(multi_examples, smol_tokenizer):
    ds = DistillDataset(multi_examples[:3])
    batch = PadCollator(smol_tokenizer.pad_token_id)([ds[i] for i in range(3)])
    tokens = supervised_tokens(build_tiny_model("llama", smol_tokenizer, seed=1), batch)
    for r in range(3):
        sel = tokens.rows == r
        assert tokens.targets[sel].tolist() == [multi_examples[r].target_ids[o] for o in tokens.offsets[sel].tolist()]
        assert tokens.offsets[sel].tolist() == list(range(len(multi_examples[r].target_ids)))


def test_supervised_tokens_of_a_seq2seq_student(multi_examples, smol_tokenizer):
    model = build_tiny_model("t5", smol_tokenizer, seed=1)
    ds = DistillDataset(multi_examples[:2], seq2seq=True, decoder_start_token_id=model.config.decoder_start_token_id)
    tokens = supervised_tokens(model, PadCollator(smol_tokenizer.pad_token_id)([ds[0], ds[1]]))
    for r in range(2):
        sel = tokens.rows == r
        assert tokens.offsets[sel].tolist() == list(range(len(multi_examples[r].target_ids)))
        assert tokens.targets[sel].tolist() == multi_examples[r].target_ids


def test_registry_and_config_checks():
    assert set(typing.get_args(TrainConfig.model_fields["method"].annotation)) == set(method_names())
    assert get_method("scott").label == "SCOTT"
    with pytest.raises(ValueError, match="unknown training method"):
        get_method("nope")
    with pytest.raises(ValueError, match="rationales_per_question"):
        RunConfig.model_validate({"train": {"method": "mcc_kd"}})
    with pytest.raises(ValueError, match="even"):
        RunConfig.model_validate({"train": {"method": "mcc_kd", "batch_size": 3}, "data": {"rationales_per_question": None}})


def test_single_rationale_data_is_refused(multi_examples, smol_tokenizer, tmp_path):
    one_each = list({e.question_id: e for e in multi_examples}.values())
    cfg = RunConfig.model_validate({"train": {"method": "scotd"}, "data": {"rationales_per_question": None}})
    ctx = MethodContext(cfg, None, smol_tokenizer, one_each, None, None, RunPaths(tmp_path))
    with pytest.raises(ValueError, match="single rationale"):
        get_method("scotd").setup(ctx)
    setup = get_method("scotd").setup(MethodContext(cfg, None, smol_tokenizer, multi_examples, None, None, RunPaths(tmp_path)))
    assert setup.examples == multi_examples and setup.report["questions_by_rationale_count"] == {3: 4}


# ----------------------------------------------------------------------------- trainers on a tiny student
def _train(trainer_cls, examples, tok, out, group_by_length=False, **kwargs):
    cfg = TrainConfig(epochs=1, batch_size=4, lr=3e-3, warmup_steps=0, save_steps=2, logging_steps=1,
                      group_by_length=group_by_length)
    model = build_tiny_model("llama", tok, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = build_trainer(model, tok, DistillDataset(examples), cfg, out, seed=0, trainer_cls=trainer_cls, **kwargs)
    summary = run_training(trainer, out, out / "final")
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    return trainer, summary, changed


def test_scott_trainer_trains_on_factual_and_counterfactual_examples(multi_examples, smol_tokenizer, tmp_path):
    flags = np.array([i % 2 == 1 for i in range(8)])
    trainer, summary, changed = _train(ScottTrainer, multi_examples[:8], smol_tokenizer, tmp_path,
                                       counterfactual=flags, counterfactual_weight=0.5)
    assert summary["global_steps"] == 2 and changed and (tmp_path / "checkpoint-2").exists()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all("loss_factual" in h and "loss_counterfactual" in h for h in logged)
    assert all(h["loss"] == pytest.approx(h["loss_factual"] + 0.5 * h["loss_counterfactual"], rel=1e-3) for h in logged)


def test_mcc_kd_trainer_batches_pairs_and_adds_consistency(multi_examples, smol_tokenizer, tmp_path):
    trainer, summary, changed = _train(MccKdTrainer, multi_examples, smol_tokenizer, tmp_path,
                                       consistency_weight=1.0)
    assert summary["global_steps"] == 4 and changed  # 4 questions x 3 rationales -> 16 indices, batch 4
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["pairs_per_batch"] == 2 and h["loss_consistency"] > 0 for h in logged)
    assert all(h["loss"] == pytest.approx(h["loss_ce"] + h["loss_consistency"], rel=1e-3) for h in logged)


@pytest.mark.parametrize("group_pairs_by_length", [True, False])
def test_mcc_kd_trainer_groups_pairs_by_length_only_when_asked(group_pairs_by_length, multi_examples, smol_tokenizer,
                                                               tmp_path):
    trainer, summary, _ = _train(MccKdTrainer, multi_examples, smol_tokenizer, tmp_path, group_by_length=True,
                                 consistency_weight=1.0, group_pairs_by_length=group_pairs_by_length)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, QuestionPairSampler)
    assert (sampler.lengths is not None) == group_pairs_by_length
    assert sampler.pairs_per_batch == (2 if group_pairs_by_length else None)  # batch 4 = 2 pairs
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert summary["global_steps"] == 4 and all(h["pairs_per_batch"] == 2 for h in logged)


def test_mcc_kd_pair_grouping_leaves_earlier_cells_and_other_methods_fingerprints_alone():
    """group_pairs_by_length came after experiment cells were fingerprinted: off (the old behaviour) it is left out
    of an mcc_kd cell's fingerprint, and it is left out of every other method's (they never read it)."""
    def dump(method, grouped):
        return RunConfig.model_validate({"train": {"method": method, "batch_size": 8},
                                         "data": {"rationales_per_question": None},
                                         "baselines": {"mcc_kd": {"group_pairs_by_length": grouped}}}).fingerprint_dump()

    assert "group_pairs_by_length" not in dump("mcc_kd", False)["baselines"]["mcc_kd"]
    assert dump("mcc_kd", True)["baselines"]["mcc_kd"]["group_pairs_by_length"] is True
    assert dump("plain", True) == dump("plain", False)
    assert "group_pairs_by_length" not in dump("kpod", True)["baselines"]["mcc_kd"]
    settings = get_method("mcc_kd").settings
    assert "group_pairs_by_length" not in settings(RunConfig.model_validate(
        {"baselines": {"mcc_kd": {"group_pairs_by_length": False}}}))  # the training stage's cache is kept too
    assert settings(RunConfig())["group_pairs_by_length"] is True


# ----------------------------------------------------------------------------- kpod run
def _run_config(tmp_path, student_dir, method, **train):
    cfg = {
        "name": "tiny", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "svamp", "max_train_questions": 4, "rationales_per_question": None},
        "student": {"name": str(student_dir), "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
        "train": {"method": method, "epochs": 1, "batch_size": 4, "save_steps": 50, "warmup_steps": 0, "lr": 1e-3, **train},
        "eval": {"max_examples": 1, "max_new_tokens": 4, "batch_size": 1},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method", ["scotd", "specialized_kd", "scott", "mcc_kd"])
def test_kpod_run_with_a_baseline(method, tmp_path, tiny_llama_dir):
    assert main(["run", str(_run_config(tmp_path, tiny_llama_dir, method)), "--no-progress"]) == 0
    run = tmp_path / "run"
    report = json.loads((run / "train" / "method.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert report["method"] == method and summary["method"] == method
    assert json.loads((run / "eval" / f"{method}-test" / "results.json").read_text())["method"] == get_method(method).label
    if method == "scott":
        assert report["factual_examples"] == 12 and report["counterfactual_examples"] > 0
    elif method == "specialized_kd":
        assert sum(report["formats"].values()) == 12 and report["formats"]["in_context_cot"] > 0
    else:
        assert report["questions_by_rationale_count"] == {"3": 4}


@pytest.mark.parametrize("method", ["scotd", "specialized_kd", "scott", "mcc_kd", "kpod_acl", "kpod_spl", "kpod_icl"])
def test_every_method_runs_on_a_seq2seq_student(method, tmp_path, tiny_t5_dir):
    """The paper's own students are FlanT5s: each baseline and curriculum trains and answers with a T5 too."""
    path = _run_config(tmp_path, tiny_t5_dir, method)
    cfg = yaml.safe_load(path.read_text())
    cfg["student"]["lora"]["targets"] = ["q", "v"]
    cfg["kpod"] = {"weighting": {"max_steps": 2, "batch_size": 4}, "clusters": 2}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "train" / "method.json").read_text())["method"] == method
    assert json.loads((run / "eval" / f"{method}-test" / "results.json").read_text())["n"] == 1


def test_shipped_experiment_configs_resolve_every_cell():
    from kpod.experiment import load_experiment, plan_cells

    folder = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    for path in sorted(folder.glob("*.yaml")):
        cells = plan_cells(load_experiment(path), path, runs_root="unused")
        assert cells and all(c.config.train.method in method_names() for c in cells)
    with pytest.raises(ConfigError):
        load_config(folder / "svamp-paper.yaml")  # an experiment file is not a run config


def _teacher_counterfactual(qid: str, answer: str, text: str, correct: bool = True) -> dict:
    """A row as `kpod teach` writes it with rationalize.target 'perturbed'."""
    return Rationale(id=qid, rationale=text, teacher="t", answer=answer if correct else "0", gold=answer,
                     correct=correct, meta={"rationalized": {"target": "perturbed"}, "gold_answer": "1"}).to_json()


def test_scott_reads_the_teachers_counterfactual_rationales(tmp_path, tiny_llama_dir):
    train = load_split("svamp", "train")[:4]
    rows = [_teacher_counterfactual(train[0].id, "17", "Take away the 3 pears, 17 are left."),
            _teacher_counterfactual(train[1].id, "5", "Half of it is 5."),
            _teacher_counterfactual(train[2].id, "9", "So 9.", correct=False),  # led elsewhere: not used
            _teacher_counterfactual("not-a-training-id", "4", "Four.")]
    path = tmp_path / "counterfactual.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = {q.id: q for q in train}
    cf_questions, cf_rationales, counts = teacher_counterfactuals(questions, str(path))
    assert {k: q.answer for k, q in cf_questions.items()} == {train[0].id: "17", train[1].id: "5"}
    assert [r.rationale for r in cf_rationales] == ["Take away the 3 pears, 17 are left.", "Half of it is 5."]
    assert counts == {"not_a_training_question": 1, "teacher_missed_its_answer": 1, "counterfactual_rationales": 2,
                      "training_questions_without_one": 2}

    config = _run_config(tmp_path, tiny_llama_dir, "scott")
    cfg = yaml.safe_load(config.read_text())
    cfg["baselines"] = {"scott": {"counterfactual_rationales": str(path)}}
    config.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(config), "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "train" / "method.json").read_text())
    assert report["factual_examples"] == 12 and report["counterfactual_examples"] == 2
    assert report["counts"]["counterfactual_rationales"] == 2

    gold = tmp_path / "gold.jsonl"  # rationales of the gold answer are refused as counterfactuals
    gold.write_text(json.dumps({**rows[0], "meta": {"rationalized": {"target": "gold"}}}) + "\n")
    with pytest.raises(ValueError, match="explains the gold answer"):
        teacher_counterfactuals(questions, str(gold))
