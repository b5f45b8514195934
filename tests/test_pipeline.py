"""`kpod run` end to end on a tiny student: stages, resume from cache, results files, and CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from kpod.cli import main
from kpod.config import ConfigError, load_config


def _config(tmp_path, student_dir, **extra):
    cfg = {
        "name": "tiny",
        "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "svamp", "max_train_questions": 12},
        "student": {"name": str(student_dir), "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
        "train": {"epochs": 1, "batch_size": 4, "save_steps": 2, "warmup_steps": 0, "lr": 1e-3},
        "eval": {"max_examples": 3, "max_new_tokens": 6, "batch_size": 3},
    }
    for key, value in extra.items():
        cfg[key].update(value)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_writes_results_and_resumes(tmp_path, tiny_llama_dir, capsys):
    path = _config(tmp_path, tiny_llama_dir, eval={"zero_shot": True})
    assert main(["run", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    stages = json.loads((run / "stages.json").read_text())
    assert {"data", "encode", "train", "eval:zero-shot-test", "eval:plain-test"} <= set(stages)
    res = json.loads((run / "eval" / "plain-test" / "results.json").read_text())
    for key in ("dataset", "split", "n", "accuracy", "method", "model", "seed", "commit"):
        assert key in res
    assert res["n"] == 3 and res["dataset"] == "svamp" and 0 <= res["accuracy"] <= 100
    preds = [json.loads(line) for line in (run / "eval" / "plain-test" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and {"id", "output", "extracted", "gold", "correct"} <= set(preds[0])
    report = json.loads((run / "data" / "report.json").read_text())
    assert report["train_questions_used"] == 12 and report["kept_rationales"] <= 12
    assert (run / "config.yaml").exists() and (run / "train" / "final").exists()
    assert "accuracy" in capsys.readouterr().out

    # Re-running does no work: every stage is cached.
    assert main(["run", str(path), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timings_s"] == {}

    # A changed training setting re-runs training, from the start (not from the other settings' checkpoints), and
    # evaluation, but not the data stages.
    assert main(["run", str(path), "--no-progress", "--set", "train.lr=0.002"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "train" in summary["timings_s"] and "data" not in summary["timings_s"]
    trained = json.loads((run / "train" / "summary.json").read_text())
    assert trained["resumed_from"] is None and trained["steps_this_run"] == trained["global_steps"] > 0
    assert "eval:plain-test" in summary["timings_s"]

    # An evaluation setting re-runs the evaluations alone: the zero-shot one comes before training, which does not
    # read it.
    assert main(["run", str(path), "--no-progress", "--set", "train.lr=0.002", "--set", "eval.max_new_tokens=4"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["timings_s"]) == {"eval:zero-shot-test", "eval:plain-test"}


def test_full_fine_tuning_of_a_seq2seq_student(tmp_path, tiny_t5_dir):
    path = _config(tmp_path, tiny_t5_dir, student={"lora": {"enabled": False}})
    assert main(["run", str(path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "eval" / "plain-test" / "results.json").read_text())["n"] == 3


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -1\n  optimiser: sgd\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "train.epochs" in str(e.value) and "train.optimiser" in str(e.value)
    (tmp_path / "nota.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "nota.yaml")
    (tmp_path / "sections.yaml").write_text("kpod:\ntrain:\n  epochs: 2\n")
    assert load_config(tmp_path / "sections.yaml", {"kpod.beta": 0}).kpod.beta == 0  # an empty section takes it
    with pytest.raises(ConfigError, match="train.epochs is a value"):
        load_config(tmp_path / "sections.yaml", {"train.epochs.x": 2})


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "x", "answer": "1"}\n{oops\n')
    assert main(["eval", "--model", "unused", "--file", str(bad)]) == 2
    assert "q.jsonl:2: malformed JSON" in capsys.readouterr().err


def test_data_stats_cli(capsys):
    assert main(["data", "stats"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["svamp"] == {"train": 700, "dev": 150, "test": 150}


def test_shipped_configs_are_valid():
    from pathlib import Path

    run_configs = [p for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
                   if not p.name.startswith("teach-")]  # teach-*.yaml are `kpod teach` configs
    assert {"default.yaml", "quick.yaml", "svamp-plain.yaml"} <= {p.name for p in run_configs}
    for path in run_configs:
        load_config(path)
    from kpod.teacher import load_teach_config

    teach_configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("teach-*.yaml"))
    assert len(teach_configs) >= 3
    for path in teach_configs:
        load_teach_config(path)


def test_kpod_run_weighs_schedules_and_trains_in_stages(tmp_path, tiny_llama_dir, capsys):
    path = _config(
        tmp_path, tiny_llama_dir,
        train={"method": "kpod", "epochs": 4, "batch_size": 4},
        eval={"max_examples": 2},
    )
    cfg = yaml.safe_load(path.read_text())
    cfg["kpod"] = {"weighting": {"max_steps": 3, "batch_size": 4, "hidden_size": 16, "mlp_hidden_size": 16},
                   "clusters": 3}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    stages = json.loads((run / "stages.json").read_text())
    assert {"weigh", "difficulty", "clusters", "schedule", "train"} <= set(stages)
    rows = [json.loads(line) for line in (run / "weighting" / "weights.jsonl").read_text().splitlines()]
    assert rows and all(len(r["weights"]) == len(r["tokens"]) and 0 < min(r["weights"]) for r in rows)
    schedule = json.loads((run / "curriculum" / "schedule.json").read_text())
    given = schedule["given_steps"]
    assert len(given) == 4 and all(c == 0 for c in given[-1])  # T = 2: full rationale from stage 2 on
    assert any(c > 0 for c in given[0])
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert [s["stage"] for s in summary["kpod_stages"]] == [0, 1, 2, 3]

    # The inspector and the weighting report read the same run directory.
    assert main(["schedule", str(run)]) == 0
    assert "| stage | phase |" in capsys.readouterr().out and (run / "curriculum" / "schedule.png").exists()
    assert main(["weigh", str(path), "--no-progress", "--show", "2"]) == 0  # weights cached: report only
    report = json.loads((run / "weighting" / "summary.json").read_text())
    assert len(report["shown"]) == 2 and report["num_tokens"] > 0
    assert "<html" in (run / "weighting" / "weights.html").read_text().lower()


def test_kpod_runs_on_a_seq2seq_student(tmp_path, tiny_t5_dir):
    """The paper's FlanT5 family: the weighting predictor (a copy of the student) is an encoder-decoder too."""
    path = _config(tmp_path, tiny_t5_dir, student={"lora": {"targets": ["q", "v"]}},
                   train={"method": "kpod", "epochs": 2, "batch_size": 4}, eval={"max_examples": 1})
    cfg = yaml.safe_load(path.read_text())
    cfg["kpod"] = {"weighting": {"max_steps": 3, "batch_size": 4, "predictor_mode": "lora"}, "clusters": 2}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    stats = json.loads((run / "weighting" / "stats.json").read_text())
    assert stats["steps"] == 3 and all(np.isfinite(stats["answer_loss"]))
    rows = [json.loads(line) for line in (run / "weighting" / "weights.jsonl").read_text().splitlines()]
    assert rows and all(len(r["weights"]) == len(r["tokens"]) and 0 < min(r["weights"]) for r in rows)
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert [s["stage"] for s in summary["kpod_stages"]] == [0, 1]
    assert json.loads((run / "eval" / "kpod-test" / "results.json").read_text())["n"] == 1


def test_kpod_ablation_switches_reach_the_artefacts(tmp_path, tiny_llama_dir):
    path = _config(tmp_path, tiny_llama_dir, train={"method": "kpod", "epochs": 2}, eval={"max_examples": 1})
    cfg = yaml.safe_load(path.read_text())
    cfg["kpod"] = {"token_weights": False, "progressive": False, "clusters": 2}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert not (run / "weighting" / "weights.jsonl").exists()  # w.o.-sig: no weighting module
    assert json.loads((run / "curriculum" / "difficulty.json").read_text())["uniform_within_step"]
    schedule = json.loads((run / "curriculum" / "schedule.json").read_text())
    assert all(c == 0 for row in schedule["given_steps"] for c in row)  # w.o.-prog


def test_seeds_share_one_zero_shot_evaluation(tmp_path, tiny_llama_dir):
    """Zero-shot decoding is greedy: a second seed reuses the first one's evaluation, and it is what it would compute."""
    cache = tmp_path / "zero-shot-cache"
    path = _config(tmp_path, tiny_llama_dir, eval={"zero_shot": True})
    run = lambda *extra: main(["run", str(path), "--no-progress", "--zero-shot-cache", str(cache), *extra])  # noqa: E731
    assert run("--run-dir", str(tmp_path / "s0")) == 0
    assert run("--run-dir", str(tmp_path / "s1"), "--set", "seed=1") == 0
    s0, s1 = (json.loads((tmp_path / s / "summary.json").read_text()) for s in ("s0", "s1"))
    assert "eval:zero-shot-test" in s0["timings_s"] and "eval:zero-shot-test" not in s1["timings_s"]
    assert "reused_from" in s1["zero_shot"][0] and "reused_from" not in s0["zero_shot"][0]
    assert "eval:plain-test" in s1["timings_s"]  # the trained student is always evaluated

    # Without the cache, seed 1 computes the same predictions that it reused.
    assert main(["run", str(path), "--no-progress", "--run-dir", str(tmp_path / "own"), "--set", "seed=1"]) == 0
    preds = lambda run_dir: (run_dir / "eval" / "zero-shot-test" / "predictions.jsonl").read_text()  # noqa: E731
    assert preds(tmp_path / "own") == preds(tmp_path / "s1") == preds(tmp_path / "s0")

    # Other generation settings are another entry, computed afresh.
    assert run("--run-dir", str(tmp_path / "short"), "--set", "eval.max_new_tokens=3") == 0
    short = json.loads((tmp_path / "short" / "summary.json").read_text())
    assert "eval:zero-shot-test" in short["timings_s"] and "reused_from" not in short["zero_shot"][0]
    assert len(list(cache.iterdir())) == 2


def test_a_finished_run_shares_its_zero_shot_evaluation(tmp_path, tiny_llama_dir):
    from kpod.pipeline import Pipeline

    path = _config(tmp_path, tiny_llama_dir, eval={"zero_shot": True})
    assert main(["run", str(path), "--no-progress"]) == 0  # no cache: a run made before there was one
    cfg, cache = load_config(path), tmp_path / "cache"
    assert Pipeline(cfg, progress=False, zero_shot_cache=cache).share_finished_zero_shot() == 1
    assert Pipeline(cfg, progress=False, zero_shot_cache=cache).share_finished_zero_shot() == 0  # already there
    (entry,) = cache.iterdir()
    assert (entry / "predictions.jsonl").read_text() == (tmp_path / "run/eval/zero-shot-test/predictions.jsonl").read_text()
    # A run whose evaluation settings changed since shares nothing: its result is not what they would give.
    changed = load_config(path, {"eval.max_new_tokens": 3})
    assert Pipeline(changed, progress=False, zero_shot_cache=tmp_path / "other").share_finished_zero_shot() == 0


def test_kpod_variants_share_weights_and_difficulty(tmp_path, tiny_llama_dir):
    """A stage cache hands a run the token weights and step difficulties that another run with the same inputs
    computed, whatever the run's seed (the weighting has its own); a run whose inputs differ (weighting seed,
    difficulty weighting) computes its own."""
    path = _config(tmp_path, tiny_llama_dir, train={"method": "kpod", "epochs": 2}, eval={"max_examples": 1})
    cfg = yaml.safe_load(path.read_text())
    cfg["kpod"] = {"weighting": {"max_steps": 3, "batch_size": 4, "hidden_size": 16, "mlp_hidden_size": 16},
                   "clusters": 2}
    path.write_text(yaml.safe_dump(cfg))
    cache = tmp_path / "stage-cache"

    def run(name, *sets):
        args = ["run", str(path), "--no-progress", "--stage-cache", str(cache), "--run-dir", str(tmp_path / name)]
        assert main(args + [x for s in sets for x in ("--set", s)]) == 0
        return json.loads((tmp_path / name / "summary.json").read_text())

    def artefacts(name):
        difficulty = json.loads((tmp_path / name / "curriculum" / "difficulty.json").read_text())
        del difficulty["wall_s"]
        return (tmp_path / name / "weighting" / "weights.jsonl").read_text(), difficulty

    first = run("kpod")
    assert "reused_stages" not in first and {"weigh", "difficulty"} <= set(first["timings_s"])
    wo_div = run("wo-div", "kpod.beta=0")
    assert set(wo_div["reused_stages"]) == {"weigh", "difficulty"}
    assert artefacts("wo-div") == artefacts("kpod")
    other_seed = run("seed1", "seed=1")
    assert set(other_seed["reused_stages"]) == {"weigh", "difficulty"}
    other_weighting_seed = run("weighting-seed1", "kpod.weighting.seed=1")
    assert "reused_stages" not in other_weighting_seed
    assert artefacts("weighting-seed1")[0] != artefacts("kpod")[0]
    plain_difficulty = run("wo-sig-dif", "kpod.weighted_difficulty=false")
    assert set(plain_difficulty["reused_stages"]) == {"weigh"}
    assert artefacts("wo-sig-dif")[1] != artefacts("kpod")[1]

    # What was reused is what the run computes on its own.
    assert main(["run", str(path), "--no-progress", "--run-dir", str(tmp_path / "own"), "--set", "kpod.beta=0"]) == 0
    assert artefacts("own") == artefacts("kpod")


def test_token_weighting_runs_on_the_run_device(tmp_path, tiny_llama_dir, monkeypatch):
    """The weighting stage's frozen copy of the student goes to the run's device (a GPU where there is one), like the
    student itself; loaded and left on the CPU, the mask learning ran there even on a GPU machine."""
    import torch

    import kpod.curriculum.stages as stages
    import kpod.distributed as dist

    seen = {}

    class Stop(Exception):
        pass

    def record_device(tokenizer, examples, questions, predictor, *args, **kwargs):
        seen["device"] = next(predictor.parameters()).device
        raise Stop

    # "meta" stands for a device other than the CPU the student is loaded on; the stage is stopped before it computes.
    monkeypatch.setattr(dist, "device", lambda: torch.device("meta"))
    monkeypatch.setattr(stages, "run_weighting", record_device)
    path = _config(tmp_path, tiny_llama_dir, train={"method": "kpod"})
    with pytest.raises(Stop):
        main(["run", str(path), "--no-progress"])
    assert seen["device"].type == "meta"


def test_an_evaluation_is_redone_when_the_method_trains_otherwise(tmp_path, tiny_llama_dir):
    from kpod.pipeline import Pipeline

    path = _config(tmp_path, tiny_llama_dir, train={"method": "kpod"})
    prints = {beta: Pipeline(load_config(path, {"kpod.beta": beta}), progress=False)._eval_fingerprint("kpod")
              for beta in (12, 0)}
    assert prints[12] != prints[0]  # a run stopped between training and evaluation must not keep the old results
    zero_shot = {beta: Pipeline(load_config(path, {"kpod.beta": beta}), progress=False)._eval_fingerprint("zero-shot")
                 for beta in (12, 0)}
    assert zero_shot[12] == zero_shot[0]  # the un-distilled student does not depend on the method


def test_custom_data_edited_in_place_is_read_again_and_a_missing_test_file_fails_first(tmp_path, tiny_llama_dir,
                                                                                        capsys):
    def write(path, pairs):
        path.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": a + b,
                                            "rationale": f"{a} + {b} = {a + b}."}) + "\n" for a, b in pairs))

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write(train, [(k, 1) for k in range(8)])
    path = _config(tmp_path, tiny_llama_dir, data={"dataset": "custom", "train_file": str(train),
                                                   "test_file": str(test), "max_train_questions": None})
    assert main(["run", str(path), "--no-progress"]) == 2  # before anything is trained
    assert "test.jsonl: file not found" in capsys.readouterr().err
    assert not (tmp_path / "run" / "train").exists()
    write(test, [(20, 3), (30, 4)])
    assert main(["run", str(path), "--no-progress"]) == 0
    write(train, [(k, 2) for k in range(8)])  # the same path, other contents
    assert main(["run", str(path), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"data", "train"} <= set(summary["timings_s"])
    rationales = [json.loads(line) for line in (tmp_path / "run" / "data" / "rationales.jsonl").read_text().splitlines()]
    assert rationales[0]["rationale"] == "0 + 2 = 2."
