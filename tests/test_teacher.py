"""`kpod teach`: zero-shot CoT prompting, the reply cache, retries and the kill/resume guarantee, against a real
OpenAI-compatible HTTP server on 127.0.0.1 (tests/teacher_server.py) through the real `openai` client."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from kpod.cli import build_parser
from kpod.config import ConfigError
from kpod.data.records import Question, Rationale, read_jsonl
from kpod.evaluation.generate import token_sampler
from kpod.teacher import FatalTeacherError, load_teach_config, load_teach_questions, run_teach
from kpod.teacher.backends import TeacherReply
from kpod.teacher.retry import parse_retry_after
from kpod.data.rationales import split_answer_statement
from kpod.teacher.zero_shot_cot import ZeroShotCoT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_server import API_KEY, FakeTeacherServer, Fault, arithmetic_reply  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def write_sums(path: Path, pairs: list[tuple[int, int]], wrong_gold: set[int] = frozenset()) -> Path:
    """A custom-dataset JSONL of "What is a + b?" questions; questions in `wrong_gold` get a wrong gold answer."""
    with path.open("w") as f:
        for i, (a, b) in enumerate(pairs):
            gold = a + b + (1 if i in wrong_gold else 0)
            f.write(json.dumps({"id": f"s{i}", "question": f"What is {a} + {b}?", "answer": gold}) + "\n")
    return path


def teach_cfg(tmp_path: Path, server: FakeTeacherServer, file: Path, **overrides):
    fields = {
        "dataset": "custom", "file": str(file), "model": "fake-teacher", "base_url": server.url,
        "out": str(tmp_path / "out"), "concurrency": 4, "timeout_s": 5.0,
        "retry": {"max_retries": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    }  # fmt: skip
    fields.update(overrides)
    return load_teach_config(None, fields)


def rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)] if path.exists() and path.stat().st_size else []


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


# ----------------------------------------------------------------------------- prompting, no server
def test_zero_shot_cot_requests_and_rationales(tmp_path):
    question = Question("q1", "What is 2 + 3?", "5", "number")
    cfg = load_teach_config(None, {"dataset": "custom", "file": "unused.jsonl", "mode": "completion", "n": 2,
                                   "temperature": 0.7, "seed": 10})
    cot = ZeroShotCoT(cfg)
    first = cot.first_request(question, sample=1)
    assert first.prompt == "Q: What is 2 + 3?\nA: Let's think step by step." and not first.chat
    assert (first.sample, first.seed, first.temperature) == (1, 11, 0.7)
    second = cot.answer_request(question, first, " 2 + 3 = 5.\n\nQ: What is 9 + 9?")  # the run-on item is cut
    assert second.prompt == "Q: What is 2 + 3?\nA: Let's think step by step. 2 + 3 = 5.\nTherefore, the answer is"
    assert (second.temperature, second.sample) == (0.0, 1)
    rationale, verdict = cot.to_rationale(question, 1, TeacherReply(" 2 + 3 = 5."), TeacherReply(" 5."))
    assert (rationale.answer, rationale.correct, verdict, rationale.sample) == ("5", True, "kept", 1)
    assert rationale.meta["text_agrees"] is True
    _, verdict = cot.to_rationale(question, 0, TeacherReply(" 2 + 3 = 6."), TeacherReply(" 6 apples."))
    assert verdict == "wrong_answer"
    _, verdict = cot.to_rationale(question, 0, TeacherReply(" Hmm."), TeacherReply(" not sure."))
    assert verdict == "no_answer"

    chat = ZeroShotCoT(load_teach_config(None, {"dataset": "custom", "file": "unused.jsonl", "mode": "chat"}))
    request = chat.first_request(question, 0)
    assert request.chat and request.prompt.startswith("What is 2 + 3?\n\nLet's think step by step.")
    rationale, verdict = chat.to_rationale(question, 0, TeacherReply("2 + 3 = 5.\nTherefore, the answer is 5."))
    assert (rationale.rationale, rationale.answer, verdict) == ("2 + 3 = 5.", "5", "kept")
    _, verdict = chat.to_rationale(question, 0, TeacherReply("The answer is 5."))
    assert verdict == "empty_rationale"
    assert split_answer_statement("a. So the final answer is (B).") == ("a.", "So the final answer is (B).")
    assert split_answer_statement("2 + 3 = 5.\n#### 5\nThe answer is 5.") == ("2 + 3 = 5.", "#### 5\nThe answer is 5.")
    assert split_answer_statement("So the answer is 6. Wait: 2 + 3 = 5. Therefore, the answer is 5.")[0] == \
        "So the answer is 6. Wait: 2 + 3 = 5."
    # only a sentence that opens with the statement is one: "the answer is" inside reasoning is reasoning
    assert split_answer_statement("5 + 3 = 8. The correct answer is 8.") == ("5 + 3 = 8.", "The correct answer is 8.")
    text = "First, check whether the answer is bigger than 10. 1 + 2 = 3. So the total is 3."
    assert split_answer_statement(text) == (text, "")
    rationale, _ = chat.to_rationale(question, 0, TeacherReply("One way to check the answer is to add. 2 + 3 = 5.\n"
                                                               "Answer: 5"))
    assert rationale.rationale == "One way to check the answer is to add. 2 + 3 = 5."
    assert chat.to_rationale(question, 0, TeacherReply(" 2 + 3 = 5. \n"))[0].rationale == "2 + 3 = 5."


def test_retry_after_header_forms():
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after({"Retry-After": "soon"}) is None and parse_retry_after({}) is None


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "teach.yaml"
    path.write_text("model: m\nn: 0\nretry: {max_retries: -1}\n")
    with pytest.raises(ConfigError) as e:
        load_teach_config(path)
    assert "n:" in str(e.value) and "retry.max_retries" in str(e.value)
    path.write_text("model: from-yaml\nconcurrency: 3\n")
    cfg = load_teach_config(path, {"concurrency": 5})
    assert (cfg.model, cfg.concurrency) == ("from-yaml", 5)
    args = build_parser().parse_args(["teach", str(path), "--concurrency", "5", "--max-retries", "2"])
    assert not hasattr(args, "model") and (args.concurrency, args.max_retries) == (5, 2)  # absent flags keep the YAML


def test_token_sampler_is_seeded_and_top_p_keeps_the_top_token():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(token_sampler(0.0)(logits), logits.argmax(-1))
    assert torch.equal(token_sampler(1.0, top_p=1e-6, seed=1)(logits), logits.argmax(-1))
    first = [token_sampler(1.0, seed=3)(logits) for _ in range(2)]
    assert torch.equal(first[0], first[1])
    draws = torch.stack([token_sampler(1.0, seed=s)(logits) for s in range(20)])
    assert len(set(draws[:, 0].tolist())) > 1  # it does sample


# ----------------------------------------------------------------------------- against the server
@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_answers_filtered_cached_and_never_asked_twice(tmp_path, mode):
    file = write_sums(tmp_path / "q.jsonl", [(i, 2 * i) for i in range(12)], wrong_gold={3, 7})
    with FakeTeacherServer() as server:
        cfg = teach_cfg(tmp_path, server, file, mode=mode, prices={"prompt_per_1k": 1.0, "completion_per_1k": 2.0})
        summary = run_teach(cfg, progress=False)
        first_counts = dict(server.requests)
        again = run_teach(cfg, progress=False)
    turns = 2 if mode == "completion" else 1
    assert summary["status"] == "complete" and summary["samples"] == 12
    assert summary["kept"] == summary["correct"] == 10 and summary["dropped"]["wrong_answer"] == 2
    assert summary["requests"]["asked"] == 12 * turns and summary["requests"]["cached"] == 0
    assert set(first_counts.values()) == {1} and len(first_counts) == 12 * turns
    assert dict(server.requests) == first_counts  # the re-run asked nothing
    assert again["requests"]["cached"] == 12 * turns and again["requests"]["asked"] == 0
    assert again["tokens"]["total"] == summary["tokens"]["total"] and again["tokens"]["this_run"]["total"] == 0
    tokens = summary["tokens"]["this_run"]
    assert summary["cost"]["this_run"] == pytest.approx(tokens["prompt"] / 1000 + 2 * tokens["completion"] / 1000)

    out = Path(cfg.out)
    kept = [Rationale.from_json(row) for row in rows(out / "rationales.jsonl")]
    assert [r.id for r in kept] == [f"s{i}" for i in range(12) if i not in (3, 7)]  # input order
    assert all(r.correct and r.teacher == "fake-teacher" and "the answer is" not in r.rationale for r in kept)
    assert [row["meta"]["dropped"] for row in rows(out / "rejected.jsonl")] == ["wrong_answer"] * 2
    if mode == "completion":  # turn 2 = turn 1 prompt + rationale + "\nTherefore, the answer is"
        assert f"Q: What is 1 + 2?\nA: Let's think step by step. {arithmetic_reply('What is 1 + 2?', False).strip()}" \
               "\nTherefore, the answer is" in first_counts


def test_429_waits_for_retry_after(tmp_path):
    file = write_sums(tmp_path / "q.jsonl", [(1, 1), (2, 2)])

    def faults(prompt, attempt):
        if attempt == 1 and "1 + 1" in prompt:
            return Fault(429, {"Retry-After": "1"})
        if attempt == 1 and "2 + 2" in prompt:
            return Fault(500)  # no Retry-After: the short backoff of the config
        return None

    with FakeTeacherServer(faults=faults) as server:
        summary = run_teach(teach_cfg(tmp_path, server, file), progress=False)
        gaps = {p: server.arrivals[p][1] - server.arrivals[p][0] for p in server.arrivals}
    rate_limited, server_error = (next(g for p, g in gaps.items() if s in p) for s in ("1 + 1", "2 + 2"))
    assert 0.95 <= rate_limited < 3.0, rate_limited
    assert server_error < 0.8, server_error
    assert summary["kept"] == 2 and summary["requests"]["retries"] == 2
    assert summary["requests"]["retry_reasons"] == {"rate_limit": 1, "server_error": 1}


def test_server_errors_timeouts_and_malformed_bodies(tmp_path):
    file = write_sums(tmp_path / "q.jsonl", [(k, 10) for k in range(6)])
    script = {
        "0 + 10": lambda attempt: Fault(500) if attempt <= 2 else None,  # recovers
        "1 + 10": lambda attempt: Fault(503),  # never recovers
        "2 + 10": lambda attempt: Fault(delay=2.5) if attempt == 1 else None,  # first attempt times out
        "3 + 10": lambda attempt: Fault(body=b"<html>not json</html>") if attempt == 1 else None,
        "4 + 10": lambda attempt: Fault(body=b'{"id": "x", "choices": []}') if attempt == 1 else None,
    }

    def faults(prompt, attempt):
        return next((make(attempt) for key, make in script.items() if key in prompt), None)

    with FakeTeacherServer(faults=faults) as server:
        cfg = teach_cfg(tmp_path, server, file, timeout_s=1.0)
        summary = run_teach(cfg, progress=False)
        counts = {key: next(n for p, n in server.requests.items() if key in p) for key in script}
    assert counts == {"0 + 10": 3, "1 + 10": 4, "2 + 10": 2, "3 + 10": 2, "4 + 10": 2}  # 4 = 1 + max_retries
    assert summary["kept"] == 5 and summary["dropped"]["failed"] == 1
    assert summary["requests"]["retry_reasons"] == {"server_error": 5, "timeout": 1, "malformed": 2}
    failures = rows(Path(cfg.out) / "failures.jsonl")
    assert [(f["id"], f["kind"], f["status"], f["attempts"]) for f in failures] == [("s1", "server_error", 503, 4)]

    with FakeTeacherServer() as healthy:  # failures are not cached: a re-run asks exactly them again
        summary = run_teach(teach_cfg(tmp_path, healthy, file), progress=False)
    assert list(healthy.requests) == ["What is 1 + 10?\n\n" + ZeroShotCoT(cfg).instruction]
    assert summary["kept"] == 6 and summary["requests"]["cached"] == 5


def test_concurrency_limit_and_identical_prompts_asked_once(tmp_path):
    file = write_sums(tmp_path / "q.jsonl", [(5, 5)] * 4 + [(k, 1) for k in range(12)])
    with FakeTeacherServer(delay=0.05) as server:
        summary = run_teach(teach_cfg(tmp_path, server, file, concurrency=3), progress=False)
    assert 2 <= server.max_active <= 3
    assert max(server.requests.values()) == 1 and len(server.requests) == 13
    assert summary["kept"] == 16


def test_fatal_auth_error_stops_and_the_key_is_never_written(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # the openai client and httpx log requests at debug level
    file = write_sums(tmp_path / "q.jsonl", [(k, 3) for k in range(5)])
    with FakeTeacherServer() as server:
        run_teach(teach_cfg(tmp_path, server, file, mode="completion"), progress=False)
        # the key given in the config itself is never written either
        inline = teach_cfg(tmp_path, server, file, api_key=API_KEY, api_key_env="NO_SUCH_VARIABLE",
                           out=str(tmp_path / "inline"))
        assert run_teach(inline, progress=False)["kept"] == 5
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0000")
        with pytest.raises(FatalTeacherError, match="401"):
            run_teach(teach_cfg(tmp_path, server, file, out=str(tmp_path / "bad")), progress=False)
    assert server.bad_auth >= 1
    assert json.loads((tmp_path / "bad" / "summary.json").read_text())["status"].startswith("stopped")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert API_KEY.encode() not in data and b"sk-wrong-key-0000" not in data, path
    assert API_KEY not in caplog.text and "sk-wrong-key-0000" not in caplog.text
    assert caplog.records  # the debug logs were really captured


def test_rationales_are_a_rationale_source_for_the_pipeline(tmp_path):
    from kpod.config import RunConfig
    from kpod.data.datasets import load_split
    from kpod.pipeline import collect_rationales

    train = load_split("svamp", "train")[:8]
    gold = {q.question: q.answer for q in train[:5]}  # the teacher knows 5 of 8

    def solver(prompt, chat):
        answer = next((a for text, a in gold.items() if text in prompt), "0")
        return f"We work it out step by step and get {answer}.\nTherefore, the answer is {answer}."

    with FakeTeacherServer(solver=solver) as server:
        cfg = load_teach_config(None, {"dataset": "svamp", "limit": 8, "base_url": server.url, "model": "fake",
                                       "out": str(tmp_path / "teach")})
        summary = run_teach(cfg, progress=False)
    assert len(load_teach_questions(cfg)) == 8
    assert summary["kept"] == sum(1 for q in train[5:] if q.answer == "0") + 5
    run_cfg = RunConfig.model_validate({"data": {"rationale_source": str(tmp_path / "teach" / "rationales.jsonl"),
                                                 "max_train_questions": 8}})
    _, rationales, report = collect_rationales(run_cfg)
    assert {r.id for r in rationales} == {q.id for q in train[:5]} | {q.id for q in train[5:] if q.answer == "0"}
    assert report["kept_rationales"] == summary["kept"]


def test_hf_backend_runs_a_local_model_through_the_cache(tmp_path, tiny_llama_dir):
    file = write_sums(tmp_path / "q.jsonl", [(1, 2), (3, 4), (5, 6)])
    cfg = load_teach_config(None, {"dataset": "custom", "file": str(file), "backend": "hf", "model": str(tiny_llama_dir),
                                   "mode": "completion", "max_tokens": 6, "answer_max_tokens": 4, "n": 2,
                                   "temperature": 1.0, "seed": 0, "batch_size": 4, "out": str(tmp_path / "hf"),
                                   "keep_wrong": True})
    summary = run_teach(cfg, progress=False)
    assert summary["samples"] == 6 and summary["requests"]["asked"] == 12
    assert 0 < summary["tokens"]["this_run"]["completion"] <= 6 * (6 + 4)
    written = rows(tmp_path / "hf" / "rationales.jsonl") + rows(tmp_path / "hf" / "rejected.jsonl")
    assert sorted((r["id"], r["sample"]) for r in written) == sorted((f"s{i}", k) for i in range(3) for k in (0, 1))
    again = run_teach(cfg, progress=False)
    assert again["requests"]["cached"] == 12 and again["requests"]["asked"] == 0


# ----------------------------------------------------------------------------- kill -9 and resume
def _teach_process(file: Path, out: Path, url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OPENAI_API_KEY": API_KEY}
    command = [sys.executable, "-m", "kpod.cli", "-v", "teach", "--file", str(file), "--base-url", url,
               "--model", "fake", "--mode", "completion", "--concurrency", "4", "--out", str(out), "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)


def test_sigkilled_run_resumes_without_asking_twice(tmp_path):
    n = 40
    file = write_sums(tmp_path / "q.jsonl", [(k, 100) for k in range(n)])
    out = tmp_path / "out"
    with FakeTeacherServer(delay=0.1) as server:
        process = _teach_process(file, out, server.url)
        deadline = time.monotonic() + 30
        while sum(server.served.values()) < 24 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert sum(server.served.values()) < 2 * n, "the run finished before it could be killed"
    assert not (out / "rationales.jsonl").exists() and (out / "rationales.jsonl.partial").exists()
    with sqlite3.connect(out / "cache.sqlite") as db:
        answered = {json.loads(r)["prompt"] for (r,) in db.execute("SELECT request FROM replies")}
    assert len(answered) >= 20

    with FakeTeacherServer() as second:
        process = _teach_process(file, out, second.url)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert API_KEY.encode() not in stdout + stderr

    requests = Counter(server.requests) + Counter(second.requests)
    assert len(requests) == 2 * n  # every prompt (2 turns x 40 questions) was asked
    assert all(requests[p] == 1 for p in answered)  # nothing answered before the kill was asked again
    assert not set(second.requests) & answered
    assert sum(requests.values()) <= 2 * n + 4  # at most the requests in flight at the kill were repeated
    kept = rows(out / "rationales.jsonl")
    assert sorted(r["id"] for r in kept) == sorted(f"s{k}" for k in range(n))  # each question exactly once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"]["cached"] == len(answered) and summary["kept"] == n


# ----------------------------------------------------------------------------- rationalization (SCOTT's teacher)
def test_rationalization_prompts_name_the_answer_and_contrast_another():
    from kpod.baselines.scott import perturbed_answer

    question = Question("q1", "What is 20 + 3?", "23", "number")
    a_prime = perturbed_answer(question, "number", 0)
    assert a_prime is not None and a_prime != "23"
    fields = {"dataset": "custom", "file": "unused.jsonl", "mode": "completion", "backend": "hf",
              "rationalize": {"enabled": True}}
    cot = ZeroShotCoT(load_teach_config(None, fields))
    first = cot.first_request(question, sample=0)
    assert first.prompt == "Q: What is 20 + 3?\nThe answer is 23. Explain why.\nA: Let's think step by step."
    assert first.contrast_prompt == first.prompt.replace("is 23.", f"is {a_prime}.") and first.contrast_strength == 0.5
    assert "contrast" in first.cache_payload()
    assert cot.explained(Question("q2", "How far?", "far", "number")) is None  # no a' to contrast with: skipped
    # turn 2 is asked without the answer: a kept rationale leads to it unaided
    second = cot.answer_request(question, first, " 20 + 3 = 23.")
    assert second.prompt == "Q: What is 20 + 3?\nA: Let's think step by step. 20 + 3 = 23.\nTherefore, the answer is"
    rationale, verdict = cot.to_rationale(question, 0, TeacherReply(" 20 + 3 = 23."), TeacherReply(" 23."))
    assert (rationale.gold, verdict) == ("23", "kept") and rationale.meta["rationalized"]["contrast_answer"] == a_prime

    # a counterfactual teacher explains a' against the gold answer, and is judged against a'
    counter = ZeroShotCoT(load_teach_config(None, {**fields, "rationalize": {"enabled": True, "target": "perturbed"}}))
    first = counter.first_request(question, sample=0)
    assert f"The answer is {a_prime}." in first.prompt and "The answer is 23." in first.contrast_prompt
    rationale, verdict = counter.to_rationale(question, 0, TeacherReply(" so."), TeacherReply(f" {a_prime}."))
    assert (rationale.gold, rationale.meta["gold_answer"], verdict) == (a_prime, "23", "kept")
    _, verdict = counter.to_rationale(question, 0, TeacherReply(" so."), TeacherReply(" 23."))
    assert verdict == "wrong_answer"

    # no contrast: plain greedy rationalization; a choice is named with its text; chat mode
    choice = Question("c1", "Where is a seal?", "B", "choice", choices=["desert", "sea", "moon"])
    chat = ZeroShotCoT(load_teach_config(None, {"dataset": "csqa", "backend": "openai",
                                                "rationalize": {"enabled": True, "contrast": "none"}}))
    first = chat.first_request(choice, sample=0)
    assert first.chat and first.contrast_prompt is None and "contrast" not in first.cache_payload()
    assert first.prompt.startswith("Where is a seal?\nAnswer Choices: (A) desert (B) sea (C) moon\n\nThe answer is (B) sea.")
    empty = ZeroShotCoT(load_teach_config(None, {"dataset": "csqa", "backend": "hf",
                                                 "rationalize": {"enabled": True, "contrast": "empty"}}))
    assert "The answer is . Explain" in empty.first_request(choice, sample=0).contrast_prompt


def test_contrastive_decoding_needs_the_hf_backend():
    with pytest.raises(ConfigError, match="backend 'hf', not 'openai'"):
        load_teach_config(None, {"rationalize": {"enabled": True}})
    load_teach_config(None, {"rationalize": {"enabled": True, "contrast": "none"}})  # plain rationalization: any backend


def test_a_backend_that_would_ignore_the_contrast_is_refused(tmp_path):
    """A registered backend that does not decode contrastively never gets a contrastive request."""
    from kpod.teacher import TeachRun
    from kpod.teacher.backends import TeacherBackend

    class PlainOnly(TeacherBackend):
        name = "plain-only"

        def complete(self, requests):
            raise AssertionError("a contrastive request reached a backend that ignores its contrast")

    file = write_sums(tmp_path / "q.jsonl", [(20, 3)])
    cfg = load_teach_config(None, {"dataset": "custom", "file": str(file), "backend": "hf", "mode": "completion",
                                   "out": str(tmp_path / "out"), "rationalize": {"enabled": True}})
    with pytest.raises(FatalTeacherError, match="'plain-only' cannot decode contrastively"):
        TeachRun(cfg, backend=PlainOnly(cfg), progress=False).run(load_teach_questions(cfg))


def test_hf_backend_rationalizes_contrastively_and_counterfactual_rows_are_kept_out_of_the_data(tmp_path, tiny_llama_dir):
    file = tmp_path / "q.jsonl"
    file.write_text("".join(json.dumps({"id": f"s{i}", "question": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate([("What is 1 + 2?", 3), ("What is 3 + 4?", 7)])))
    base = {"dataset": "custom", "file": str(file), "backend": "hf", "model": str(tiny_llama_dir),
            "mode": "completion", "max_tokens": 6, "answer_max_tokens": 4, "batch_size": 4, "keep_wrong": True}
    runs = {}
    for name, rationalize in {"greedy": {"enabled": True, "contrast": "none"},
                              "contrastive": {"enabled": True, "strength": 1.0},
                              "counterfactual": {"enabled": True, "target": "perturbed", "strength": 1.0}}.items():
        cfg = load_teach_config(None, {**base, "out": str(tmp_path / name), "rationalize": rationalize})
        summary = run_teach(cfg, progress=False)
        assert summary["samples"] == 2 and summary["skipped_questions"] == 0
        written = rows(tmp_path / name / "rationales.jsonl") + rows(tmp_path / name / "rejected.jsonl")
        runs[name] = {r["id"]: r for r in written}
        assert run_teach(cfg, progress=False)["requests"]["asked"] == 0  # contrastive replies come from the cache
    assert set(runs["greedy"]) == set(runs["contrastive"]) == {"s0", "s1"}
    assert [runs["contrastive"][i]["rationale"] for i in ("s0", "s1")] != [runs["greedy"][i]["rationale"] for i in ("s0", "s1")]
    assert runs["counterfactual"]["s0"]["meta"]["gold_answer"] == "3" and runs["counterfactual"]["s0"]["gold"] != "3"

    from kpod.config import RunConfig
    from kpod.data.records import DataError
    from kpod.pipeline import collect_rationales

    counterfactual = tmp_path / "counterfactual" / "rationales.jsonl"
    counterfactual.write_text("".join(json.dumps({**r, "id": q.id}) + "\n" for r, q in
                                      zip(runs["counterfactual"].values(), load_teach_questions(
                                          load_teach_config(None, {"dataset": "svamp"}))[:2])))
    with pytest.raises(DataError, match="explain a perturbed answer"):
        collect_rationales(RunConfig.model_validate({"data": {"rationale_source": str(counterfactual)}}))


def _cli_teach(tmp_path: Path, server: FakeTeacherServer, file: Path, **overrides) -> int:
    from kpod.cli import main

    fields = {"dataset": "custom", "file": str(file), "model": "fake-teacher", "base_url": server.url,
              "out": str(tmp_path / "out"), "retry": {"max_retries": 1, "backoff_initial_s": 0.01}, **overrides}
    (tmp_path / "teach.yaml").write_text(yaml.safe_dump(fields))
    return main(["teach", str(tmp_path / "teach.yaml"), "--no-progress"])


def test_a_rationale_the_teacher_was_stopped_in_is_dropped(tmp_path, capsys):
    file = write_sums(tmp_path / "q.jsonl", [(1, 1), (2, 5)])
    with FakeTeacherServer() as server:
        summary = run_teach(teach_cfg(tmp_path, server, file, max_tokens=6), progress=False)
        assert summary["kept"] == 0 and summary["dropped"]["truncated"] == 2
        assert {r["meta"]["dropped"] for r in rows(tmp_path / "out" / "rejected.jsonl")} == {"truncated"}
        assert _cli_teach(tmp_path, server, file, max_tokens=6) == 1  # nothing kept: the command fails
        assert "no rationale kept of 2 samples" in capsys.readouterr().err
        assert run_teach(teach_cfg(tmp_path, server, file, max_tokens=100), progress=False)["kept"] == 2


def test_a_run_whose_requests_all_fail_stops_and_exits_with_an_error(tmp_path, capsys):
    file = write_sums(tmp_path / "q.jsonl", [(k, 1) for k in range(8)])
    with FakeTeacherServer(faults=lambda prompt, attempt: Fault(400)) as server:  # e.g. a parameter it refuses
        assert _cli_teach(tmp_path, server, file, stop_after_failures=3, concurrency=1) == 2
        assert "the last 3 samples all failed" in capsys.readouterr().err
        assert sum(server.requests.values()) < 8
    quota = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                       "code": "insufficient_quota"}}
    with FakeTeacherServer(faults=lambda prompt, attempt: Fault(429, body=json.dumps(quota).encode())) as server:
        with pytest.raises(FatalTeacherError, match="no quota left"):
            run_teach(teach_cfg(tmp_path, server, file, concurrency=1), progress=False)
        # a spent budget is not retried like a rate limit, and the run stops at once (a batch may be in flight)
        assert max(server.requests.values()) == 1 and sum(server.requests.values()) <= 2


def test_a_stopped_run_leaves_no_earlier_run_s_rationales(tmp_path, monkeypatch):
    file = write_sums(tmp_path / "q.jsonl", [(1, 2), (3, 4)])
    with FakeTeacherServer() as server:
        assert run_teach(teach_cfg(tmp_path, server, file, model="old-teacher"), progress=False)["kept"] == 2
        assert (tmp_path / "out" / "rationales.jsonl").exists()
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0000")
        with pytest.raises(FatalTeacherError, match="401"):
            run_teach(teach_cfg(tmp_path, server, file, model="new-teacher"), progress=False)
    assert not (tmp_path / "out" / "rationales.jsonl").exists()  # the folder holds no finished output of another config
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["teacher"] == "new-teacher"
