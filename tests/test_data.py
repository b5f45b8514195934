"""Datasets with the paper's exact splits, user JSONL, and the released rationale sets (no dev/test leakage)."""

from __future__ import annotations

import json

import pytest

from kpod.data.custom import load_user_jsonl
from kpod.data.datasets import PACKAGED_DATA, load_split, split_counts
from kpod.data.rationales import assert_no_leakage, import_rationales, normalise_text, split_answer_statement
from kpod.data.records import DataError, Rationale

PAPER_COUNTS = {
    "gsm8k": {"train": 7473, "dev": 660, "test": 659},
    "asdiv": {"train": 1462, "dev": 313, "test": 314},
    "svamp": {"train": 700, "dev": 150, "test": 150},
    "csqa": {"train": 8520, "dev": 1221, "test": 1221},
}


def test_shipped_svamp_has_the_paper_split():
    splits = {s: load_split("svamp", s) for s in ("train", "dev", "test")}
    assert {s: len(v) for s, v in splits.items()} == PAPER_COUNTS["svamp"]
    ids = [q.id for v in splits.values() for q in v]
    assert len(set(ids)) == len(ids)  # splits are disjoint
    first = splits["test"][0]
    assert first.id == "chal-429" and first.answer == "111"  # gold 111.0 normalised
    raw = {r["ID"]: r for r in json.loads((PACKAGED_DATA / "raw" / "svamp" / "SVAMP.json").read_text())}
    assert first.question == f"{raw['chal-429']['Body'].strip()} {raw['chal-429']['Question'].strip()}"
    assert all(q.question and q.answer for v in splits.values() for q in v)


def test_all_four_datasets_have_the_paper_counts(shared_data):
    counts = split_counts(shared_data)
    assert counts == PAPER_COUNTS


def test_ids_are_stable_and_gold_answers_are_normalised(shared_data):
    gsm = load_split("gsm8k", "test", shared_data)
    assert gsm[0].id == "gsm8k-test-0" and gsm[0].answer == "18"
    assert all("," not in q.answer for q in load_split("gsm8k", "train", shared_data))
    asdiv = {q.id: q for q in load_split("asdiv", "train", shared_data)}
    assert asdiv["nluds-0004"].answer == "6"  # "6 (balloons)"
    csqa = load_split("csqa", "test", shared_data)
    assert len(csqa[0].choices) == 5 and csqa[0].answer in "ABCDE"


def test_unknown_dataset_and_split_are_clear_errors():
    with pytest.raises(DataError, match="unknown dataset 'gsm9k'.*svamp"):
        load_split("gsm9k", "train")
    with pytest.raises(DataError, match="unknown split"):
        load_split("svamp", "validation")


def test_split_all_is_train_dev_and_test_in_order(shared_data):
    parts = [load_split("asdiv", s, shared_data) for s in ("train", "dev", "test")]
    every = load_split("asdiv", "all", shared_data)
    assert [q.id for q in every] == [q.id for part in parts for q in part]
    assert len(every) == 1462 + 313 + 314 == len({q.id for q in every})


def test_missing_dataset_file_names_it(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "kpod_splits.json").write_text(json.dumps({"gsm8k": {"train": {"ids": [0]}}}))
    with pytest.raises(DataError, match="raw/gsm8k/train.jsonl"):
        load_split("gsm8k", "train", tmp_path)


# ----------------------------------------------------------------------------- user JSONL
def _write(tmp_path, lines):
    p = tmp_path / "mine.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_user_jsonl_reads_questions_and_rationales(tmp_path):
    p = _write(tmp_path, [
        json.dumps({"question": "2 + 3?", "answer": "5", "rationale": "2 + 3 = 5. The answer is 5."}),
        json.dumps({"id": "q2", "question": "1,000 + 1?", "answer": "1,001",
                    "rationales": ["1000 + 1 = 1001. The answer is 1,001.", "It is 1000."]}),
    ])
    qs, rs = load_user_jsonl(p, "number")
    assert [q.id for q in qs] == ["mine-1", "q2"] and [q.answer for q in qs] == ["5", "1001"]
    assert [(r.id, r.sample, r.correct) for r in rs] == [("mine-1", 0, True), ("q2", 0, True), ("q2", 1, False)]


def test_user_jsonl_choice_correctness(tmp_path):
    p = _write(tmp_path, [json.dumps({"id": "q2", "question": "Pick", "answer": "B", "choices": ["x", "y"],
                                      "rationales": ["It is y. So the answer is (b).", "It is x. So the answer is (a)."]})])
    qs, rs = load_user_jsonl(p, "choice")
    assert qs[0].answer == "B" and [r.correct for r in rs] == [True, False]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "a?", "answer": 1', "mine.jsonl:2: malformed JSON"),
        ('{"answer": "3"}', "mine.jsonl:2: missing field 'question'"),
        ('{"question": "  ", "answer": "3"}', "mine.jsonl:2: 'question' must be a non-empty string"),
        ('{"question": "q", "answer": "three-ish"}', "mine.jsonl:2: cannot read answer"),
        ('[1, 2]', "mine.jsonl:2: expected a JSON object"),
        ('{"question": null, "answer": "3"}', "mine.jsonl:2: 'question' must be a non-empty string"),
        ('{"question": "q", "answer": {"value": 5}}', "mine.jsonl:2: 'answer' must be a number or a string"),
        ('{"question": "q", "answer": "A", "choices": [{"label": "A", "text": "red"}, "blue"]}',
         "mine.jsonl:2: 'choices' must be a list of 2 to 5 non-empty strings"),
        ('{"question": "q", "answer": "A", "choices": ["a", "b", "c", "d", "e", "f"]}', "read as the letters A-E"),
        ('{"question": "q", "answer": "3", "rationale": "  "}', "mine.jsonl:2: empty rationale"),
    ],
)
def test_bad_user_jsonl_names_file_and_line(tmp_path, line, message):
    p = _write(tmp_path, [json.dumps({"question": "ok?", "answer": "1"}), line])
    with pytest.raises(DataError, match=message):
        load_user_jsonl(p, "number")


# ----------------------------------------------------------------------------- released rationales
def test_gpt35_svamp_rationales_are_train_only_and_counted():
    rationales, report = import_rationales("svamp", "gpt35")
    assert report["read"] == len(rationales) == 1953
    assert report["train_questions_with_correct_rationale"] == 651
    train_ids = {q.id for q in load_split("svamp", "train")}
    assert {r.id for r in rationales} <= train_ids
    per_q = {}
    for r in rationales:
        per_q.setdefault(r.id, []).append(r.sample)
    assert all(sorted(v) == list(range(len(v))) for v in per_q.values())  # several kept per question
    assert_no_leakage(rationales, "svamp")


def test_palm_svamp_release_covers_test_questions_and_they_are_dropped(shared_data):
    rationales, report = import_rationales("svamp", "palm", shared_data)
    # The release was made on another split: 300 of its 1000 questions are KPOD dev/test questions.
    assert report["dropped_not_in_train_split"] == 300
    held = {normalise_text(q.question) for s in ("dev", "test") for q in load_split("svamp", s, shared_data)}
    texts = {q.id: normalise_text(q.question) for q in load_split("svamp", "train", shared_data)}
    assert not any(texts[r.id] in held for r in rationales)
    assert not any("\nQ:" in r.rationale for r in rationales)  # run-on few-shot text cut
    assert 0 < report["dropped_wrong_answer"] < report["rationales"]


def test_leakage_guard_raises(shared_data):
    bad = Rationale(id="chal-429", rationale="x", teacher="t", answer="1", gold="1", correct=True)
    with pytest.raises(DataError, match="dev/test"):
        assert_no_leakage([bad], "svamp", shared_data)


def test_llama3_gsm8k_inconsistent_reasoning_is_dropped(shared_data):
    rationales, report = import_rationales("gsm8k", "llama3", shared_data)
    assert report["of_which_inconsistent_reasoning"] > 0
    flagged = [r for r in rationales if r.meta.get("inconsistent_reasoning")]
    assert flagged and not any(r.correct for r in flagged)
    assert report["correct"] + report["dropped_wrong_answer"] == report["rationales"]


def test_csqa_palm_rationales_cover_train_only(shared_data):
    rationales, report = import_rationales("csqa", "palm", shared_data)
    assert report["rationales"] == 8520 and report["dropped_not_in_train_split"] == 1221
    accuracy = report["correct"] / report["rationales"]
    assert 0.6 < accuracy < 0.9  # about 76 % of PaLM's CSQA answers are right (data README)


@pytest.mark.parametrize("text, reasoning, statement", [
    ("8 * 2 = 16. 16 + 8 * 4 = 48. The answer is 48", "8 * 2 = 16. 16 + 8 * 4 = 48.", "The answer is 48"),  # LLaMA-3
    ("84 / 2 = 42. The answer is (84 / 2).", "84 / 2 = 42.", "The answer is (84 / 2)."),  # PaLM, SVAMP
    ("Only sincere describes a good person. So the answer is (e) sincere.",
     "Only sincere describes a good person.", "So the answer is (e) sincere."),  # PaLM, CSQA
    ("3 + 2 owls.\nTherefore, the answer is 3+2=5.", "3 + 2 owls.", "Therefore, the answer is 3+2=5."),
    ("So the answer is 5. Check: 2 + 3 = 5. The answer is 5", "So the answer is 5. Check: 2 + 3 = 5.", "The answer is 5"),
])
def test_a_closing_answer_statement_is_cut_from_the_reasoning(text, reasoning, statement):
    assert split_answer_statement(text) == (reasoning, statement)


@pytest.mark.parametrize("text", [
    "She has 35 + 33 = 68 bottle caps.",  # GPT-3.5's usual ending: no statement
    "I think the answer is 5 because 2 + 3 = 5.",  # mid-sentence, not a statement of its own
    "The answer is 5.\nCheck: 2 + 3 = 5.",  # reasoning follows the trigger
    "The answer is 48",  # nothing would be left
])
def test_text_without_a_closing_answer_statement_is_kept_whole(text):
    assert split_answer_statement(text) == (text, "")


@pytest.mark.parametrize("strip", [True, False])
def test_gsm8k_targets_get_one_answer_sentence_when_the_statement_is_cut(shared_data, strip):
    from kpod.config import RunConfig
    from kpod.data.prompts import render_target
    from kpod.pipeline import collect_rationales

    cfg = RunConfig.model_validate({"data": {"dataset": "gsm8k", "data_dir": str(shared_data), "max_train_questions": 40,
                                             "strip_answer_statement": strip}})
    questions, rationales, report = collect_rationales(cfg)
    gold = {q.id: q.answer for q in questions}
    targets = [render_target(r.rationale, gold[r.id], cfg.data.target_template)[0] for r in rationales]
    # Every LLaMA-3 rationale states its answer at the end; the template adds "Therefore, the answer is N." after it.
    sentences = [t.lower().count("the answer is") for t in targets]
    if strip:
        assert report["answer_statements_cut"] == len(rationales) == sentences.count(1)
        assert all(r.meta["answer_statement"].startswith("The answer is") for r in rationales)
    else:
        assert "answer_statements_cut" not in report and sentences.count(2) == len(rationales)



def test_released_rationales_whose_text_reaches_another_answer_can_be_dropped():
    from kpod.config import RunConfig
    from kpod.pipeline import collect_rationales

    def collect(require: bool):
        cfg = RunConfig.model_validate({"data": {"dataset": "svamp", "max_train_questions": 120,
                                                 "rationales_per_question": None, "require_text_agrees": require}})
        return collect_rationales(cfg)[1:]

    kept, report = collect(False)
    disagreeing = [r for r in kept if r.meta["text_agrees"] is False]
    assert report["text_disagrees_with_stated_answer"] == len(disagreeing) > 0  # the GPT-3.5 release has such rows
    strict, strict_report = collect(True)
    assert len(strict) == len(kept) - len(disagreeing) and all(r.meta["text_agrees"] for r in strict)
    assert strict_report["text_disagrees_with_stated_answer"] == len(disagreeing)
    # the option left at its default changes no fingerprint (finished runs and cells stay finished)
    assert "require_text_agrees" not in RunConfig().data.fingerprint_fields()


def test_user_jsonl_encodings_and_signs(tmp_path, caplog):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes("\ufeff".encode() + json.dumps({"question": "3 - 8?", "answer": "\u22125",
                                                    "rationale": "3 \u2212 8 = \u22125. The answer is \u22125.",
                                                    "Explanation": "typo"}).encode() + b"\n")
    qs, rs = load_user_jsonl(bom, "number")  # an editor's byte-order mark is read past
    assert qs[0].answer == "-5" and rs[0].correct  # a unicode minus in the gold keeps its sign
    assert "'Explanation' (1 lines)" in caplog.text  # a field kpod does not read is named, not silently dropped
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "caf\xe9?", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="latin.jsonl:1: not UTF-8"):
        load_user_jsonl(latin, "number")
    with pytest.raises(DataError, match="not a file"):
        load_user_jsonl(tmp_path, "number")


def test_custom_data_takes_taught_rationales_and_keeps_its_test_questions_apart(tmp_path):
    from kpod.config import RunConfig
    from kpod.pipeline import collect_rationales

    train = _write(tmp_path, [json.dumps({"id": f"t{k}", "question": f"What is {k} + 2?", "answer": k + 2})
                              for k in range(3)])
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"question": "What is 9 + 9?", "answer": 18}) + "\n")
    taught = tmp_path / "taught.jsonl"  # as `kpod teach --file` writes them
    taught.write_text("".join(json.dumps(Rationale(id=i, rationale=f"{k} + 2 = {k + 2}.", teacher="t", answer=str(k + 2),
                                                   gold=str(k + 2), correct=True).to_json()) + "\n"
                              for k, i in [(0, "t0"), (1, "t1"), (5, "other")]))

    def collect(**data):
        return collect_rationales(RunConfig.model_validate({"data": {
            "dataset": "custom", "train_file": str(train), "test_file": str(test), **data}}))

    with pytest.raises(DataError, match="no rationale to train on"):  # questions alone: nothing to distil
        collect()
    _, rationales, report = collect(rationale_source=str(taught))
    assert [r.id for r in rationales] == ["t0", "t1"] and report["rationale_source_not_in_train_file"] == 1
    with pytest.raises(DataError, match="3 test questions are also in"):
        collect(rationale_source=str(taught), test_file=str(train))


def test_the_custom_data_example_is_read_whole(monkeypatch):
    from pathlib import Path

    from kpod.config import load_config
    from kpod.pipeline import collect_rationales, load_questions

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # its paths are relative to where kpod runs, as a user runs it
    cfg = load_config(root / "configs" / "custom-example.yaml")
    questions, rationales, report = collect_rationales(cfg)
    assert len(questions) == report["kept_rationales"] == 6 and report["dropped_wrong_answer_total"] == 0
    assert len(load_questions(cfg, "test")) == 3
