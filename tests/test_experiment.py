"""`kpod experiment`: the table math, cell planning, a tiny grid (2 methods x 1 dataset x 2 seeds) run and resumed,
and one cell in its own process."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kpod.cli import main
from kpod.config import ConfigError, RunConfig, load_yaml_model
from kpod.data.datasets import load_split
from kpod.experiment import (
    ExperimentConfig,
    TableSpec,
    column_of,
    load_experiment,
    parse_column,
    plan_cells,
    write_report,
)
from kpod.experiment.cells import evaluation_folders, question_outcomes, shown_run_dir
from kpod.experiment.report import (
    aggregate,
    comparison_table,
    comparisons,
    format_cell,
    machine_label,
    markdown_table,
    seed_spread,
    seed_spread_table,
    table_checks,
)
from kpod.experiment.stats import (
    difference_interval,
    format_p,
    mean_std,
    one_way_anova,
    paired_difference_interval,
    sign_flip_p,
    wilson_interval,
)


# ----------------------------------------------------------------------------- table math
def test_mean_and_sample_std():
    vals = [60.0, 62.0, 67.0]
    mean, std = mean_std(vals)
    assert mean == pytest.approx(statistics.mean(vals)) and std == pytest.approx(statistics.stdev(vals))
    assert mean_std([50.0]) == (50.0, 0.0) and mean_std([]) == (None, None)


def _record(method, seed, acc, zero=None, dataset="svamp"):
    rec = {"method": method, "seed": seed, "dataset": dataset, "accuracy": {"svamp": {"accuracy": acc}}}
    if zero is not None:
        rec["zero_shot_accuracy"] = {"svamp": {"accuracy": zero}}
    return rec


def test_aggregate_and_tables(caplog):
    records = [_record("plain", 0, 10.0, zero=2.0), _record("plain", 1, 14.0, zero=2.0), _record("kpod", 0, 20.0),
               _record("kpod", 1, 23.0), _record("kpod", 2, 29.0), _record("scott", 0, 30.0, zero=9.0)]
    agg = aggregate(records)
    assert agg["kpod"]["svamp"]["values"] == [20.0, 23.0, 29.0] and agg["kpod"]["svamp"]["mean"] == pytest.approx(24.0)
    assert agg["kpod"]["svamp"]["std"] == pytest.approx(statistics.stdev([20, 23, 29]))
    assert agg["zero_shot"]["svamp"]["values"] == [2.0, 2.0]  # one value per seed, from the first cell that has it
    assert "accuracy differs between cells of seed 0 (9.00 in scott, 2.00 shown)" in caplog.text  # not silently
    exp = ExperimentConfig(name="t", base="b.yaml", seeds=[0, 1, 2], datasets={"svamp": {}},
                           methods={"plain": {}, "kpod": {"label": "KPOD (ours)"}, "scott": {}})
    spec = TableSpec(title="T1", methods=["zero_shot", "plain", "kpod", "scott", "scotd"],
                     reference={"kpod": {"svamp": 25.33}})
    lines = markdown_table(exp, spec, agg).splitlines()
    assert lines[0] == "### T1" and lines[2] == "| method | svamp | ref. svamp |" and lines[-1] == "ref.: the paper."
    assert lines[5] == "| plain CoT distillation | 12.00 ± 2.83 (n=2) | – |"
    assert lines[6] == f"| KPOD (ours) | 24.00 ± {statistics.stdev([20, 23, 29]):.2f} | 25.33 |"
    assert lines[7] == "| SCOTT | 30.00 (n=1) | – |" and lines[8] == "| SCoTD | – | – |"
    assert lines[4] == "| no distillation (zero-shot CoT) | 2.00 (one run) | – |"  # one greedy run, not a spread
    assert format_cell(None, 3) == "–"


def test_tables_average_the_counted_accuracy_not_the_rounded_one():
    counts = [10, 10, 9]  # of 150: 6.666..., 6.666..., 6.0; stored rounded as 6.67, 6.67, 6.0
    records = [{"method": "scotd", "seed": s, "accuracy": {"svamp": {"accuracy": round(100 * c / 150, 2),
                                                                    "correct": c, "n": 150}}}
               for s, c in enumerate(counts)]
    stats = aggregate(records)["scotd"]["svamp"]
    assert stats["mean"] == pytest.approx(100 * 29 / 450) and format_cell(stats, 3) == "6.44 ± 0.38"
    assert format_cell(aggregate([{**r, "accuracy": {"svamp": {"accuracy": r["accuracy"]["svamp"]["accuracy"]}}}
                                  for r in records])["scotd"]["svamp"], 3) == "6.45 ± 0.39"  # without counts


def test_score_intervals_match_published_examples():
    # Newcombe (1998), Statistics in Medicine 17: 56/70 against 48/80, method 10: 0.0524 to 0.3339
    diff, low, high = difference_interval(56 / 70, 70, 48 / 80, 80)
    assert diff == pytest.approx(20.0) and (low, high) == pytest.approx((5.24, 33.39), abs=0.01)
    # Wilson interval of 0/10 stays at 0 and above (a normal interval would be [0, 0])
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)


def _counted(method, seed, correct, n=150, zero=None):
    rec = {"method": method, "seed": seed, "dataset": "svamp", "done": True,
           "accuracy": {"svamp": {"accuracy": 100 * correct / n, "correct": correct, "n": n}}}
    if zero is not None:
        rec["zero_shot_accuracy"] = {"svamp": {"accuracy": 100 * zero / n, "correct": zero, "n": n}}
    return rec


def test_kpod_is_compared_with_each_method_by_an_interval_over_the_test_questions():
    exp = ExperimentConfig(name="t", base="b.yaml", seeds=[0, 1, 2], datasets={"svamp": {}},
                           methods={"plain": {}, "kpod": {}, "scott": {}, "scotd": {}})
    records = [_counted("kpod", s, c) for s, c in ((0, 60), (1, 66), (2, 63))]           # pooled 42 %
    records += [_counted("plain", 0, 15, zero=3), _counted("plain", 1, 21, zero=3)]    # 12 %; zero-shot 2 %
    records += [_counted("scott", 0, 66), _counted("scott", 1, 60)]                   # 42 %
    records.append({**_counted("scotd", 0, 150), "done": False})                      # unfinished: ignored
    rows = {r["method"]: r for r in comparisons(exp, records, aggregate(records))}
    assert set(rows) == {"zero_shot", "plain", "scott"}
    plain = rows["plain"]
    lo_kpod, hi_kpod = wilson_interval(0.42, 150)  # 150 questions, however many seeds answered them
    lo_plain, hi_plain = wilson_interval(0.12, 150)
    assert plain["difference"] == pytest.approx(30.0)
    assert plain["low"] == pytest.approx(100 * (0.30 - math.hypot(0.42 - lo_kpod, hi_plain - 0.12)))
    assert plain["high"] == pytest.approx(100 * (0.30 + math.hypot(hi_kpod - 0.42, 0.12 - lo_plain)))
    assert plain["verdict"] == "higher" and (plain["seeds_ahead"], plain["seeds_shared"]) == (2, 2)
    assert rows["zero_shot"]["difference"] == pytest.approx(40.0)
    assert rows["zero_shot"]["seeds_shared"] == 3  # the greedy zero-shot evaluation stands for every seed
    scott = rows["scott"]
    assert scott["difference"] == pytest.approx(0.0) and scott["verdict"] == "no clear difference"
    assert (scott["seeds_ahead"], scott["seeds_shared"]) == (1, 2)  # seed 0: 60 < 66, seed 1: 66 > 60
    table = comparison_table(exp, comparisons(exp, records, aggregate(records))).splitlines()
    assert table[0] == "### KPOD against each method"
    assert "| svamp | plain CoT distillation | +30.00 |" in table[5]
    assert comparisons(exp.model_copy(update={"compare_with": None}), records, aggregate(records)) == []


def test_paired_interval_is_the_mean_per_question_difference_with_its_standard_error():
    a = np.array([1.0, 1.0, 0.0, 0.0, 1.0])
    b = np.array([0.0, 1.0, 0.0, 0.0, 0.0])
    diff, low, high, differing = paired_difference_interval(a, b)
    se = math.sqrt((2 * 0.6**2 + 3 * 0.4**2) / 4) / math.sqrt(5)  # differences 1, 0, 0, 0, 1: mean 0.4
    assert diff == pytest.approx(40.0) and (low, high) == pytest.approx((100 * (0.4 - 1.96 * se), 100 * (0.4 + 1.96 * se)))
    assert differing == 2
    assert paired_difference_interval(a, a)[1:] == (0.0, 0.0, 0)  # the same answers: no difference, no width


def test_the_paired_test_stays_sound_when_few_questions_differ():
    from scipy.stats import binom

    # One seed each, 659 questions, the first method right on 4 more: the normal interval clears 0, the exact test
    # (4 of 4 in its favour happen by chance with p = 2 / 16) does not.
    a, b = np.zeros(659), np.zeros(659)
    a[:4] = 1.0
    assert paired_difference_interval(a, b)[1] > 0 and sign_flip_p(a, b) == pytest.approx(0.125)
    assert sign_flip_p(b, a) == pytest.approx(0.125) and sign_flip_p(a, a) == 1.0
    # Seed means (thirds): differences 1, 1, 1/3, -1/3 sum to 2; 6 of the 16 sign patterns reach |2| (ties count).
    assert sign_flip_p(np.array([1, 1, 2 / 3, 0.0]), np.array([0, 0, 1 / 3, 1 / 3])) == pytest.approx(6 / 16)
    # More than 16: seeded draws, close to the exact binomial p of 30 of 40 differences in one direction.
    a, b = np.zeros(300), np.zeros(300)
    a[:30], b[30:40] = 1.0, 1.0
    exact = 2 * binom.sf(29, 40, 0.5)
    assert sign_flip_p(a, b) == pytest.approx(exact, abs=0.001) and sign_flip_p(a, b) == sign_flip_p(a, b)


def _answered(method, seed, right, n=150, questions="q150"):
    """A finished cell whose answers per question are on hand: questions 0..n-1, the ones in `right` answered right."""
    outcomes = "".join("1" if i in right else "0" for i in range(n))
    return {"method": method, "seed": seed, "dataset": "svamp", "done": True,
            "accuracy": {"svamp": {"accuracy": 100 * len(right) / n, "correct": len(right), "n": n,
                                   "outcomes": outcomes, "questions": questions}}}


def test_methods_answering_the_same_questions_are_compared_question_by_question():
    exp = ExperimentConfig(name="t", base="b.yaml", seeds=[0, 1], datasets={"svamp": {}},
                           methods={"plain": {}, "mcc_kd": {}, "scotd": {}}, compare_with="mcc_kd")
    # MCC-KD gets right every question plain gets right, and 12 more: 20 % against 12 % on 150 questions, in both seeds.
    records = [_answered("mcc_kd", s, set(range(30))) for s in (0, 1)] + [_answered("plain", s, set(range(18))) for s in (0, 1)]
    # SCoTD: as many right as plain, but on other questions (a different digest: other questions, not comparable).
    records += [_answered("scotd", s, set(range(100, 118)), questions="other") for s in (0, 1)]
    rows = {r["method"]: r for r in comparisons(exp, records, aggregate(records))}
    plain, scotd = rows["plain"], rows["scotd"]
    assert plain["difference"] == pytest.approx(8.0) and plain["low"] < 0  # unpaired: no verdict
    d = np.array([1.0] * 12 + [0.0] * 138)
    se = float(d.std(ddof=1)) / math.sqrt(150)
    assert (plain["paired_low"], plain["paired_high"]) == pytest.approx((100 * (0.08 - 1.96 * se), 100 * (0.08 + 1.96 * se)))
    assert plain["paired_low"] > 0 and plain["verdict"] == "higher" and plain["questions_differing"] == 12
    assert plain["paired_p"] == pytest.approx(2 / 2**12)  # 12 of 12 in MCC-KD's favour, every sign pattern counted
    assert scotd["paired_low"] is None and scotd["verdict"] == "no clear difference"  # falls back to the unpaired one
    # One seed without its answers: no paired comparison for that method.
    records[3] = {**records[3], "accuracy": {"svamp": {k: v for k, v in records[3]["accuracy"]["svamp"].items()
                                                       if k not in ("outcomes", "questions")}}}
    assert {r["method"]: r for r in comparisons(exp, records, aggregate(records))}["plain"]["paired_low"] is None
    table = comparison_table(exp, comparisons(exp, records[:2] + records[4:] + records[2:3], aggregate(records))).splitlines()
    assert table[2].endswith("| 95 % interval | paired 95 % interval | questions scored differently | paired p | verdict "
                             "| seeds MCC-KD ahead |")
    assert any(line.startswith("| svamp | plain CoT distillation | +8.00 |") and "| 12 of 150 | < 0.001 | higher |" in line
               for line in table)
    assert any("| SCoTD |" in line and "| – | – | – | no clear difference |" in line for line in table)
    # Reports of cells without their answers keep the table they had.
    assert "paired" not in comparison_table(exp, comparisons(exp, [_counted("mcc_kd", 0, 30), _counted("plain", 0, 18)],
                                                             aggregate([])))


def test_answers_per_question_are_read_from_the_evaluation_they_belong_to(tmp_path):
    def evaluation(name, method, correct_flags, ids=None):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        ids = ids or list(range(len(correct_flags)))
        res = {"dataset": "svamp", "split": "test", "method": method, "n": len(correct_flags), "correct": sum(correct_flags)}
        (folder / "results.json").write_text(json.dumps(res))
        (folder / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "correct": c}) + "\n"
                                                          for i, c in zip(ids, correct_flags)))
        return res

    trained = evaluation("plain-test", "plain", [True, False, True])
    zero = evaluation("zero-shot-test", "zero-shot", [False, False, True])
    evaluated = evaluation_folders(tmp_path)
    got, got_zero = question_outcomes(trained, evaluated), question_outcomes(zero, evaluated)
    assert got["outcomes"] == "101" and got_zero["outcomes"] == "001"
    assert got["questions"] == got_zero["questions"]  # the same questions
    assert question_outcomes({**trained, "n": 4}, evaluated) == {}  # a result that no folder holds
    evaluation("plain-copy-test", "plain", [False, True, True], ids=["a", "b", "c"])  # the same counts elsewhere
    assert question_outcomes(trained, evaluation_folders(tmp_path)) == {}  # two folders match: not told apart


def test_a_table_compares_its_rows_with_its_own_reference_row(tmp_path):
    exp = ExperimentConfig(name="t", base="b.yaml", seeds=[0, 1], datasets={"svamp": {}},
                           methods={"plain": {}, "kpod": {}, "kpod_shared": {"label": "KPOD (shared)"}, "kpod_acl": {}},
                           tables=[{"title": "Schedules", "methods": ["kpod_shared", "kpod_acl", "zero_shot"],
                                    "compare_with": "kpod_shared"}])
    records = [_counted("kpod_shared", 0, 3, zero=3), _counted("kpod_shared", 1, 5),
               _counted("kpod_acl", 0, 9), _counted("kpod_acl", 1, 7),
               _counted("kpod", 0, 30), _counted("kpod", 1, 33), _counted("plain", 0, 12), _counted("plain", 1, 14)]
    agg = aggregate(records)
    checks = table_checks(exp, exp.tables[0], records, agg, explain=False)
    rows = {r["method"]: r for r in checks["comparison"]}
    assert set(rows) == {"kpod_acl", "zero_shot"}  # the table's rows only, not kpod or plain
    assert rows["kpod_acl"]["against"] == "kpod_shared"
    assert rows["kpod_acl"]["difference"] == pytest.approx(100 * (8 - 16) / 300)
    assert (rows["kpod_acl"]["seeds_ahead"], rows["kpod_acl"]["seeds_shared"]) == (0, 2)
    (spread,) = checks["seed_spread"]
    assert spread["methods"] == ["kpod_shared", "kpod_acl"] and spread["runs"] == 4  # not the other methods
    assert checks["markdown"].startswith("#### Schedules: KPOD (shared) against each row")

    report = write_report(exp, [{**r, "cell": f"{r['method']}-{r['seed']}"} for r in records], tmp_path)
    assert set(report["table_comparisons"]) == {"Schedules"}
    md = (tmp_path / "t.md").read_text()
    assert md.index("#### Schedules: KPOD (shared) against each row") < md.index("### KPOD against each method")
    with pytest.raises(ValueError, match="one of the table's methods"):
        TableSpec(title="T", methods=["plain", "kpod"], compare_with="kpod_acl")
    with pytest.raises(ValueError, match="one of the table's methods"):
        TableSpec(title="T", methods=["zero_shot", "kpod"], compare_with="zero_shot")


def test_seed_spread_is_a_one_way_anova_over_the_training_runs():
    from scipy.stats import ttest_ind

    exp = ExperimentConfig(name="t", base="b.yaml", seeds=[0, 1, 2], datasets={"svamp": {}},
                           methods={"plain": {}, "kpod": {}, "scott": {}})
    records = [_record("plain", s, a, zero=2.0) for s, a in enumerate((1.0, 2.0, 3.0))]
    records += [_record("kpod", s, a) for s, a in enumerate((4.0, 5.0, 6.0))]
    records.append(_record("scott", 0, 9.0))  # one seed: no spread of its own, left out
    (row,) = seed_spread(exp, aggregate(records))
    assert row["methods"] == ["plain", "kpod"] and row["runs"] == 6 and row["df"] == [1, 4]
    assert row["seed_std"] == pytest.approx(1.0) and row["std_of_means"] == pytest.approx(statistics.stdev([2, 5]))
    assert row["f"] == pytest.approx(13.5)
    # with two groups the ANOVA is Student's two-sample t-test (F = t squared, the same p)
    t = ttest_ind([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert row["f"] == pytest.approx(t.statistic ** 2) and row["p"] == pytest.approx(t.pvalue)
    assert "| svamp | 2 | 6 | 1.00 | 2.12 | 13.50 (1, 4) | 0.021 |" in seed_spread_table([row]).splitlines()

    same = [_record(m, s, a) for m in ("plain", "kpod") for s, a in enumerate((3.0, 5.0, 4.0))]
    (row,) = seed_spread(exp, aggregate(same))
    assert row["f"] == pytest.approx(0.0) and row["p"] == pytest.approx(1.0)
    flat = [_record(m, s, a) for m, a in (("plain", 2.0), ("kpod", 4.0)) for s in range(3)]
    (row,) = seed_spread(exp, aggregate(flat))
    assert row["seed_std"] == 0.0 and row["f"] is None and "| – | – |" in seed_spread_table([row])
    assert seed_spread(exp, aggregate(records[:3])) == []  # one method: nothing to compare


def test_one_way_anova_matches_scipy_on_groups_of_unequal_size():
    from scipy.stats import f_oneway

    groups = [[1.0, 2.5, 3.0], [4.0, 5.5], [2.0, 2.0, 7.0, 3.5]]
    result = one_way_anova(groups)
    reference = f_oneway(*groups)
    assert result["df"] == [2, 6]
    assert result["f"] == pytest.approx(reference.statistic) and result["p"] == pytest.approx(reference.pvalue)
    within = sum((x - statistics.mean(g)) ** 2 for g in groups for x in g) / 6
    assert result["within_std"] == pytest.approx(math.sqrt(within))
    assert one_way_anova([[1.0, 1.0], [3.0, 3.0]])["f"] is None  # no spread inside the groups: no F


def test_results_name_the_library_versions_they_were_computed_with():
    import transformers

    from kpod.evaluation.evaluate import machine

    here = machine()
    assert here["transformers"] == transformers.__version__ and here["peft"] and here["accelerate"]
    assert machine_label(here).endswith(f", transformers {here['transformers']}, peft {here['peft']}")
    older = {"cpu": "AMD EPYC", "cores": 2, "gpu": None, "torch": "2.13.0+cpu"}  # records from before the versions
    assert machine_label(older) == "AMD EPYC (2 cores), torch 2.13.0+cpu"


def test_reports_name_cell_folders_without_the_machine_s_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_run_dir(tmp_path / "runs" / "exp" / "cell") == "runs/exp/cell"
    assert shown_run_dir(Path("runs/exp/cell")) == "runs/exp/cell"
    assert shown_run_dir(tmp_path.parent / "elsewhere" / "my-runs" / "exp" / "cell") == "my-runs/exp/cell"


def test_columns_name_out_of_distribution_evaluations():
    assert column_of({"dataset": "gsm8k", "split": "test"}, "gsm8k") == "gsm8k"
    assert column_of({"dataset": "asdiv", "split": "test"}, "gsm8k") == "asdiv (from gsm8k)"
    assert column_of({"dataset": "svamp", "split": "dev"}, "svamp") == "svamp dev"


# ----------------------------------------------------------------------------- the grid
def _experiment(tmp_path, student_dir, methods, seeds=(0, 1), runner="in_process"):
    base = {
        "name": "base", "data": {"dataset": "svamp", "max_train_questions": 4},
        "student": {"name": str(student_dir), "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
        "train": {"epochs": 1, "batch_size": 4, "save_steps": 50, "warmup_steps": 0, "lr": 1e-3, "logging_steps": 1},
        "eval": {"max_examples": 2, "max_new_tokens": 4, "batch_size": 2},
    }
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(base))
    exp = {"name": "tiny-grid", "base": "base.yaml", "seeds": list(seeds), "datasets": {"svamp": {}},
           "runner": runner, "methods": methods,
           "tables": [{"title": "Methods", "methods": ["zero_shot", *methods]}]}
    path = tmp_path / "configs" / "exp.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def test_cells_get_their_overrides_and_bad_cells_fail_before_running(tmp_path):
    path = _experiment(tmp_path, "some-student", {"plain": {"overrides": {"eval.zero_shot": True}},
                                                  "no_div": {"label": "w.o.-div",
                                                             "overrides": {"train.method": "kpod", "kpod.beta": 0}}})
    cells = plan_cells(load_experiment(path), path, runs_root=tmp_path / "runs")
    assert [c.name for c in cells] == ["svamp-plain-s0", "svamp-plain-s1", "svamp-no_div-s0", "svamp-no_div-s1"]
    nodiv = cells[3].config
    assert (nodiv.train.method, nodiv.kpod.beta, nodiv.seed, nodiv.name) == ("kpod", 0, 1, "svamp-no_div-s1")
    assert cells[0].config.eval.zero_shot and not nodiv.eval.zero_shot
    assert cells[0].run_dir == tmp_path / "runs" / "tiny-grid" / "svamp-plain-s0"
    bad = yaml.safe_load(path.read_text())
    bad["methods"] = {"mcc_kd": {}}  # needs data.rationales_per_question: null
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ConfigError, match="svamp-mcc_kd-s0"):
        plan_cells(load_experiment(path), path, tmp_path / "runs")
    bad["methods"] = {"my_variant": {}}
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ConfigError, match="train.method"):
        load_experiment(path)


def test_a_seed_or_method_not_in_the_grid_is_refused(tmp_path):
    from kpod.experiment import run_experiment

    path = _experiment(tmp_path, "some-student", {"plain": {}})
    with pytest.raises(ConfigError, match="no seed 7 in this experiment"):
        run_experiment(path, runs_root=tmp_path / "runs", results_dir=tmp_path / "out", seeds=[7], dry_run=True)
    with pytest.raises(ConfigError, match="no method 'nope'"):
        run_experiment(path, runs_root=tmp_path / "runs", results_dir=tmp_path / "out", methods=["nope"], dry_run=True)


def test_seed_token_weighting_reseeds_only_the_cells_that_compute_weights(tmp_path):
    """Off (the default) every seed keeps kpod.weighting.seed; on, the cells that compute token weights take their
    own seed, unless their method names one, and the other cells' configs stay as they were."""
    methods = {"plain": {}, "kpod": {}, "kpod_acl": {}, "wo_sig": {"overrides": {"train.method": "kpod",
                                                                                "kpod.token_weights": False}},
               "pinned": {"overrides": {"train.method": "kpod", "kpod.weighting.seed": 7}}}
    path = _experiment(tmp_path, "some-student", methods, seeds=(0, 1, 2))

    def plan(reseed):
        raw = yaml.safe_load(path.read_text())
        raw["seed_token_weighting"] = reseed
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return {c.name: c for c in plan_cells(load_experiment(path), path, runs_root=tmp_path / "runs")}

    off, on = plan(False), plan(True)
    assert {c.config.kpod.weighting.seed for c in off.values() if c.method != "pinned"} == {0}
    for seed in (0, 1, 2):
        assert on[f"svamp-kpod-s{seed}"].config.kpod.weighting.seed == seed
        assert on[f"svamp-kpod_acl-s{seed}"].config.kpod.weighting.seed == seed
        assert on[f"svamp-pinned-s{seed}"].config.kpod.weighting.seed == 7
        for unweighted in ("plain", "wo_sig"):
            name = f"svamp-{unweighted}-s{seed}"
            assert on[name].fingerprint() == off[name].fingerprint()
    assert on["svamp-kpod-s1"].fingerprint() != off["svamp-kpod-s1"].fingerprint()
    assert on["svamp-kpod-s0"].fingerprint() == off["svamp-kpod-s0"].fingerprint()  # seed 0 was already seed 0


def test_tiny_grid_runs_reports_and_resumes(tmp_path, tiny_llama_dir, capsys, monkeypatch):
    path = _experiment(tmp_path, tiny_llama_dir, {"plain": {"overrides": {"eval.zero_shot": True}}, "kpod_icl": {}})
    args = ["experiment", str(path), "--runs-root", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "--no-progress"]
    assert main(args) == 0
    out = json.loads((tmp_path / "results" / "tiny-grid.json").read_text())
    assert [c["status"] for c in out["cells"]] == ["done"] * 4
    for c in out["cells"]:
        assert 0 <= c["accuracy"]["svamp"]["accuracy"] <= 100 and c["train"]["loss_curve"]
        assert c["machine"]["cores"] == os.cpu_count() and "commit" in c  # every cell names where it ran
        svamp = c["accuracy"]["svamp"]  # which questions it got right, for comparisons question by question
        assert len(svamp["outcomes"]) == svamp["n"] and svamp["outcomes"].count("1") == svamp["correct"]
    assert len({c["accuracy"]["svamp"]["questions"] for c in out["cells"]}) == 1
    assert out["cells"][0]["zero_shot_accuracy"]["svamp"]["questions"] == out["cells"][0]["accuracy"]["svamp"]["questions"]
    accs = [c["accuracy"]["svamp"]["accuracy"] for c in out["cells"] if c["method"] == "kpod_icl"]
    stats = out["aggregate"]["kpod_icl"]["svamp"]
    assert stats["mean"] == pytest.approx(statistics.mean(accs)) and stats["std"] == pytest.approx(statistics.stdev(accs))
    assert out["aggregate"]["zero_shot"]["svamp"]["n"] == 2
    # The un-distilled student is evaluated once; the second seed reuses it.
    zs = [json.loads((tmp_path / f"runs/tiny-grid/svamp-plain-s{s}/summary.json").read_text())["zero_shot"][0]
          for s in (0, 1)]
    assert "reused_from" not in zs[0] and "reused_from" in zs[1] and zs[0]["accuracy"] == zs[1]["accuracy"]
    md = (tmp_path / "results" / "tiny-grid.md").read_text()
    assert "(recorded by 4 of 4 finished cells)" in md and "Ran on: not recorded" not in md
    assert "| KPOD-ICL |" in md and "| no distillation (zero-shot CoT) |" in md and "4/4 cells finished" in md
    assert "Accuracy (%) on the test split, mean" in md  # no whole-benchmark column, so no word of split 'all'
    steps = out["cells"][0]["train"]["global_steps"]
    assert f"| plain CoT distillation | 2 | {steps} |" in md.split("### Cost per cell")[1]  # the budgets, per method
    assert (tmp_path / "results" / "tiny-grid-accuracy.png").stat().st_size > 0
    assert (tmp_path / "results" / "tiny-grid-loss.png").stat().st_size > 0
    assert "| plain CoT distillation |" in capsys.readouterr().out

    # Resume: a second invocation runs nothing and reports the same numbers.
    markers = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("tiny-grid/*/experiment-cell.json")}
    assert len(markers) == 4
    assert main(args) == 0
    again = json.loads((tmp_path / "results" / "tiny-grid.json").read_text())
    assert again["aggregate"] == out["aggregate"]
    assert {p: p.stat().st_mtime_ns for p in markers} == markers
    assert main(args + ["--dry-run"]) == 0
    assert capsys.readouterr().out.count(" done") == 4

    # Where the cells are stored is not part of them: the grid moved to another folder and reached through a
    # relative runs root is finished too, and so is a cell whose marker recorded its run_dir (as markers did before).
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "runs", tmp_path / "moved" / "runs")
    monkeypatch.chdir(tmp_path / "moved")
    cells = plan_cells(load_experiment(path), path, runs_root="runs")
    assert str(cells[0].run_dir) == "runs/tiny-grid/svamp-plain-s0" and all(c.is_done() for c in cells)
    marker = json.loads(cells[0].marker.read_text())
    for recorded, done in ((cells[0].fingerprint(str(tmp_path / "moved" / cells[0].run_dir)), True), ("0" * 16, False)):
        cells[0].marker.write_text(json.dumps({**marker, "fingerprint": recorded}))
        assert cells[0].is_done() == done

    # The report is the durable record: with the run folders gone (a fresh clone), the finished cells are kept from
    # results/tiny-grid.json, reported with the same numbers, and not run again.
    shutil.rmtree(tmp_path / "moved" / "runs")
    assert main(args + ["--dry-run"]) == 0
    assert capsys.readouterr().out.count("done (kept from the report)") == 4
    assert main(args) == 0
    assert not (tmp_path / "runs").exists()
    kept = json.loads((tmp_path / "results" / "tiny-grid.json").read_text())
    assert kept["aggregate"] == out["aggregate"] and "4/4 cells finished" in (tmp_path / "results" / "tiny-grid.md").read_text()
    assert [c["accuracy"] for c in kept["cells"]] == [c["accuracy"] for c in out["cells"]]  # answers per question too
    # ... but only for the settings it was run with: a cell whose config changed, or whose entry did not finish, runs.
    cells = plan_cells(load_experiment(path), path, runs_root="runs", results_dir=tmp_path / "results")
    assert all(c.is_done() and c.done_in_report() for c in cells)
    cells[0].config.train.lr = 5e-4
    cells[1].reported = {**cells[1].reported, "done": False}
    assert not cells[0].is_done() and not cells[1].is_done() and cells[2].is_done()
    assert not plan_cells(load_experiment(path), path, runs_root="runs")[0].is_done()  # no results folder given


def test_a_cell_runs_in_its_own_process(tmp_path, tiny_llama_dir):
    path = _experiment(tmp_path, tiny_llama_dir, {"plain": {}}, seeds=(3,), runner="subprocess")
    args = ["experiment", str(path), "--runs-root", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "--device", "cpu"]
    assert main(args) == 0
    cell = tmp_path / "runs" / "tiny-grid" / "svamp-plain-s3"
    assert json.loads((cell / "experiment-cell.json").read_text())["status"] == "done"
    assert "accuracy" in (cell / "experiment.log").read_text()
    assert yaml.safe_load((cell / "config.yaml").read_text())["seed"] == 3


def test_cells_run_side_by_side_with_jobs(tmp_path, tiny_llama_dir):
    """--jobs 3: the three cells run at once, each its own process. The two KPOD variants of one seed share their
    token weights through the stage cache: one publishes the entry whole, the other leaves it, no half-copied or
    temporary entry stays, and both train on the same weights."""
    kpod_small = {"kpod.weighting.max_steps": 3, "kpod.weighting.hidden_size": 16,
                  "kpod.weighting.mlp_hidden_size": 16, "kpod.clusters": 2}
    path = _experiment(tmp_path, tiny_llama_dir, {"plain": {}, "kpod": {"overrides": kpod_small},
                                                  "no_div": {"overrides": {"train.method": "kpod", "kpod.beta": 0,
                                                                           **kpod_small}}},
                       seeds=(0,), runner="subprocess")
    args = ["experiment", str(path), "--runs-root", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "--device", "cpu", "--no-progress"]
    assert main(args + ["--jobs", "0"]) == 2  # a clear error, nothing run
    assert not (tmp_path / "runs").exists()
    assert main(args + ["--jobs", "3"]) == 0
    grid = tmp_path / "runs" / "tiny-grid"
    markers = [json.loads((grid / f"svamp-{m}-s0" / "experiment-cell.json").read_text()) for m in ("plain", "kpod", "no_div")]
    assert [m["status"] for m in markers] == ["done"] * 3
    finished = [time.mktime(time.strptime(m["finished"], "%Y-%m-%d %H:%M:%S")) for m in markers]
    starts = [f - m["wall_s"] for f, m in zip(finished, markers)]
    assert max(starts) < min(finished)  # every cell started before any ended
    entries = list((grid / "stage-cache" / "weigh").iterdir())
    assert len(entries) == 1 and (entries[0] / "complete").exists()
    weights = [(grid / f"svamp-{m}-s0" / "weighting" / "weights.jsonl").read_text() for m in ("kpod", "no_div")]
    assert weights[0] == weights[1]
    assert not list((grid / "stage-cache").glob("*/*.tmp-*"))
    out = json.loads((tmp_path / "results" / "tiny-grid.json").read_text())
    assert [c["status"] for c in out["cells"]] == ["done"] * 3


def _run_svamp_student(tmp_path, tiny_llama_dir, shared_data, **evaluation) -> list[dict]:
    """Train a tiny student on 4 SVAMP questions, evaluate it as `evaluation` says; its evaluation results."""
    cfg = {
        "name": "ood", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "svamp", "data_dir": str(shared_data), "max_train_questions": 4},
        "student": {"name": str(tiny_llama_dir), "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj"]}},
        "train": {"epochs": 1, "batch_size": 4, "save_steps": 50, "warmup_steps": 0},
        "eval": {"max_examples": 2, "max_new_tokens": 4, "batch_size": 2, **evaluation},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    return json.loads((tmp_path / "run" / "summary.json").read_text())["results"]


@pytest.mark.parametrize("dataset, split, train", [("svamp", "test", "svamp"), ("asdiv", "all", "gsm8k"),
                                                     ("gsm8k", "dev", "gsm8k"), ("asdiv", "test", "svamp")])
def test_parse_column_undoes_column_of(dataset, split, train):
    column = column_of({"dataset": dataset, "split": split}, train)
    assert parse_column(column) == (dataset, split, None if train == dataset else train)


def test_parse_column_refuses_other_names():
    for name in ["", "svamp (from)", "plain svamp test extra", "svamp (from gsm8k) dev"]:
        with pytest.raises(ValueError, match="not a table column"):
            parse_column(name)


def test_out_of_distribution_evaluation(tmp_path, tiny_llama_dir, shared_data):
    results = _run_svamp_student(tmp_path, tiny_llama_dir, shared_data, datasets=["asdiv", "svamp"])
    assert [(r["dataset"], r["split"], r["n"]) for r in results] == [("svamp", "test", 2), ("asdiv", "test", 2)]
    assert (tmp_path / "run" / "eval" / "plain-asdiv-test" / "predictions.jsonl").exists()
    assert [column_of(r, "svamp") for r in results] == ["svamp", "asdiv (from svamp)"]


def test_other_datasets_can_be_tested_on_other_splits(tmp_path, tiny_llama_dir, shared_data):
    results = _run_svamp_student(tmp_path, tiny_llama_dir, shared_data, datasets=["asdiv"], splits=[],
                                 other_splits=["dev", "all"])
    assert [(r["dataset"], r["split"], r["n"]) for r in results] == [("asdiv", "dev", 2), ("asdiv", "all", 2)]
    assert [column_of(r, "svamp") for r in results] == ["asdiv dev (from svamp)", "asdiv all (from svamp)"]
    # the first questions of "all" are those of the train split
    first = json.loads((tmp_path / "run" / "eval" / "plain-asdiv-all" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["id"] == load_split("asdiv", "train", shared_data)[0].id


def test_other_splits_without_other_datasets_is_a_config_error():
    with pytest.raises(ConfigError, match="eval.other_splits names the splits of eval.datasets, which is empty"):
        load_yaml_model(RunConfig, None, {"eval.other_splits": ["all"]})


def test_other_splits_left_unset_keeps_the_fingerprints_of_finished_cells():
    plain = RunConfig.model_validate({"eval": {"datasets": ["asdiv"]}})
    assert "other_splits" not in plain.fingerprint_dump()["eval"]
    chosen = RunConfig.model_validate({"eval": {"datasets": ["asdiv"], "other_splits": ["all"]}})
    assert chosen.fingerprint_dump()["eval"]["other_splits"] == ["all"]


def test_a_p_below_one_in_a_thousand_is_not_shown_as_zero():
    assert format_p(1 / 100_001) == "< 0.001"
    assert format_p(0.001) == "0.001" and format_p(0.1554) == "0.155"
    assert format_p(0.0497) == "0.0497" and format_p(0.05) == "0.050"  # a p that passes 0.05 never reads 0.050
    spread = seed_spread_table([{"column": "svamp", "methods": ["a", "b"], "runs": 6, "seed_std": 1.3,
                                 "std_of_means": 5.0, "f": 43.9, "df": (3, 8), "p": 2e-5}], explain=False)
    assert spread.endswith("| 43.90 (3, 8) | < 0.001 |")
