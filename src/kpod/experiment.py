"""`kpod experiment`: a grid of methods x datasets x seeds, each cell one `kpod run`, then the paper's tables.

    kpod experiment configs/experiments/svamp-paper.yaml             # run what is missing, then report
    kpod experiment configs/experiments/svamp-paper.yaml --dry-run   # list the cells and their state
    kpod experiment configs/experiments/svamp-paper.yaml --report-only --method kpod --method scotd

An experiment file names a base run config, the datasets, the methods (each a set of `--set` style overrides) and
the seeds. Every cell's config is resolved and validated before anything runs, written to
`runs/EXPERIMENT/CELL/cell-config.yaml` and run in its own process (`runner: subprocess`, the default; a crash or a
leak stays in its cell) or in this one (`runner: in_process`). A cell whose `experiment-cell.json` records the same
config is finished and skipped, so re-running an experiment resumes it; inside a cell, `kpod run` resumes by stage.
The report is the durable record: a cell whose run folder is gone (another machine, a fresh clone, `make clean`) but
whose entry in `results/EXPERIMENT.json` is finished with the same config is kept from there, not run again. To run
such a cell again, delete its entry from that JSON (or pass another --results-dir).
The un-distilled student's (zero-shot) evaluation is greedy, so it does not depend on the seed: the cells share
it through `runs/EXPERIMENT/zero-shot-cache/`, and only the first cell to need one computes it. Likewise the KPOD
variants share their token weights and step difficulties through `runs/EXPERIMENT/stage-cache/`. The weights depend
on `kpod.weighting.seed`, not on the cell's seed: every seed of a grid trains on one set of weights unless the
experiment sets `seed_token_weighting: true` (then each seed has its own, and the spread over seeds includes theirs).

Results: `results/EXPERIMENT.json` (every cell's accuracies, train summary, config fingerprint, and mean/std per
method and column), `results/EXPERIMENT.md` (one markdown table per `tables` entry: rows methods, columns the
datasets evaluated, cells "mean ± std" over seeds; then KPOD against each method with a 95 % interval, the spread
between seeds against the spread between methods, and what each method's cells cost),
`results/EXPERIMENT-accuracy.png` (bars with error bars) and `results/EXPERIMENT-loss.png` (training loss curves,
mean over seeds). Layout of the experiment file:

    name: svamp-paper
    base: ../default.yaml                  # relative to this file
    seeds: [0, 1, 2]
    datasets: {svamp: {}}                  # dataset -> overrides for its cells (data.dataset is set to the key)
    overrides: {eval.zero_shot: true}      # every cell
    methods:                               # name -> {label, overrides}; train.method defaults to the name
      plain: {}
      scotd: {overrides: {data.rationales_per_question: null}}
      kpod_wo_sig: {label: KPOD-w.o.-sig, overrides: {train.method: kpod, kpod.token_weights: false}}
    tables:
      - {title: "Table 1", methods: [zero_shot, plain, scotd, kpod]}   # zero_shot: the un-distilled student
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from kpod.baselines.registry import method_label, method_names, trains_on_token_weights
from kpod.config import ConfigError, RunConfig, Strict, dump_config, load_config

log = logging.getLogger("kpod.experiment")
ZERO_SHOT = "zero_shot"  # the pseudo-method of the un-distilled student's results
ZERO_SHOT_LABEL = "no distillation (zero-shot CoT)"


# ----------------------------------------------------------------------------- the experiment file
class MethodEntry(Strict):
    label: str | None = Field(None, description="row label in the tables; default the method's own label")
    overrides: dict[str, Any] = Field({}, description="dotted run-config overrides, e.g. {kpod.beta: 0}; train.method defaults to the entry's name")


class TableSpec(Strict):
    title: str = Field(..., description="table heading")
    methods: list[str] = Field(..., description="rows, in order: names from `methods`, or zero_shot")
    columns: list[str] | None = Field(None, description="columns, in order (e.g. 'svamp', 'asdiv (from gsm8k)'); default every one found")
    note: str = Field("", description="a sentence under the table")
    reference: dict[str, dict[str, float]] = Field({}, description="published numbers per row and column, shown in an extra column group")
    reference_label: str = Field("the paper", description="where the published numbers come from (a line under the table)")
    compare_with: str | None = Field(
        None, description="one of this table's rows to compare its other rows with, under the table (difference, 95 % "
        "interval, seeds ahead, over the table's columns), with a one-way ANOVA over the table's rows: for a reference "
        "row other than the experiment's compare_with, e.g. KPOD with the same token weights as its variants")

    @model_validator(mode="after")
    def _reference_row_is_in_the_table(self):
        if self.compare_with is not None and (self.compare_with == ZERO_SHOT or self.compare_with not in self.methods):
            raise ValueError(f"compare_with {self.compare_with!r} must be one of the table's methods (not {ZERO_SHOT})")
        return self


class ExperimentConfig(Strict):
    name: str = Field(..., description="experiment name: runs/NAME/ and results/NAME.*")
    base: str = Field(..., description="base run config, relative to the experiment file")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds of every method x dataset")
    datasets: dict[str, dict[str, Any]] = Field(..., min_length=1, description="dataset -> overrides of its cells; data.dataset defaults to the key")
    methods: dict[str, MethodEntry] = Field(..., min_length=1, description="method -> label and overrides")
    overrides: dict[str, Any] = Field({}, description="overrides of every cell (applied first)")
    tables: list[TableSpec] = Field([], description="tables to write; default one with every method")
    runner: Literal["subprocess", "in_process"] = Field("subprocess", description="a process per cell, or all in this one")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="cpu: hide GPUs from subprocess cells; cuda: refuse to start without a GPU; auto: a GPU if torch sees one")
    compare_with: str | None = Field("kpod", description="the method the report compares every other against (difference, 95 % interval, seeds won); null: no comparison")
    seed_token_weighting: bool = Field(
        False, description="each cell's seed also seeds the token weighting (kpod.weighting.seed), so the spread over "
        "seeds includes the weights'; off: every seed trains on the weights of kpod.weighting.seed (0 unless set), "
        "computed once per grid")


def load_experiment(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        for key, entry in (raw.get("methods") or {}).items():
            raw["methods"][key] = entry or {}
        exp = ExperimentConfig.model_validate(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    except ValidationError as e:
        lines = [f"{path}: invalid experiment"]
        lines += [f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("\n".join(lines)) from None
    known = set(method_names())
    for key, entry in exp.methods.items():
        if key == ZERO_SHOT:
            raise ConfigError(f"{path}: '{ZERO_SHOT}' is reserved for the un-distilled student's row")
        if key not in known and "train.method" not in entry.overrides:
            raise ConfigError(f"{path}: method entry {key!r} is not a method name ({', '.join(sorted(known))}); "
                              "give it overrides: {train.method: ...}")
    return exp


# ----------------------------------------------------------------------------- cells
@dataclass
class Cell:
    method: str
    dataset: str
    seed: int
    run_dir: Path
    config: RunConfig
    reported: dict | None = None  # this cell's entry in the experiment's last report, if any

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def config_path(self) -> Path:
        return self.run_dir / "cell-config.yaml"

    @property
    def marker(self) -> Path:
        return self.run_dir / "experiment-cell.json"

    @property
    def zero_shot_cache(self) -> Path:
        """Shared by the experiment's cells: the un-distilled student is evaluated once per dataset, not per seed."""
        return self.run_dir.parent / "zero-shot-cache"

    @property
    def stage_cache(self) -> Path:
        """Shared by the experiment's cells: token weights and step difficulties, kept by their fingerprint."""
        return self.run_dir.parent / "stage-cache"

    def fingerprint(self, run_dir: str | None = None) -> str:
        """The cell's settings, without where it is stored, so that a grid run from another folder or with another
        --runs-root finds its finished cells. (`run_dir`: put back in, as fingerprints before this recorded it.)"""
        dump = self.config.fingerprint_dump()
        if run_dir is None:
            del dump["run_dir"]
        else:
            dump["run_dir"] = run_dir
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]

    def _older_fingerprints(self) -> set[str]:
        """Fingerprints of this cell as recorded with its run_dir: the folder as given, resolved, or the default."""
        dirs = {str(self.run_dir), str(self.run_dir.resolve()), f"runs/{self.run_dir.parent.name}/{self.run_dir.name}"}
        return {self.fingerprint(d) for d in dirs}

    def done_in_run_dir(self) -> bool:
        if not (self.marker.exists() and (self.run_dir / "summary.json").exists()):
            return False
        marker = json.loads(self.marker.read_text())
        recorded = marker.get("fingerprint")
        return marker.get("status") == "done" and (recorded == self.fingerprint()
                                                   or recorded in self._older_fingerprints())

    def done_in_report(self) -> bool:
        """Finished with these settings according to the last report, and its run folder holds no other attempt."""
        rec = self.reported
        return (rec is not None and rec.get("done") is True and rec.get("fingerprint") == self.fingerprint()
                and "accuracy" in rec and not self.marker.exists())

    def is_done(self) -> bool:
        return self.done_in_run_dir() or self.done_in_report()


def cell_overrides(exp: ExperimentConfig, dataset: str, method: str, seed: int, run_dir: Path) -> dict:
    """Overrides of one cell, later ones winning: experiment, dataset, method, then the cell's own."""
    out = dict(exp.overrides)
    out["data.dataset"] = dataset
    out.update(exp.datasets[dataset])
    if method in method_names():
        out["train.method"] = method
    out.update(exp.methods[method].overrides)
    out.update({"seed": seed, "name": run_dir.name, "run_dir": str(run_dir)})
    return out


def reported_cells(exp: ExperimentConfig, results_dir: str | Path | None) -> dict[str, dict]:
    """The cells of the experiment's last report in `results_dir` (none when there is no report yet)."""
    if results_dir is None:
        return {}
    path = Path(results_dir) / f"{exp.name}.json"
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: the experiment's report is not valid JSON ({e}); fix or remove it") from e
    return {rec["cell"]: rec for rec in report.get("cells", []) if "cell" in rec}


def plan_cells(exp: ExperimentConfig, exp_path: str | Path, runs_root: str | Path = "runs",
               results_dir: str | Path | None = None) -> list[Cell]:
    """Every cell with its validated config (any invalid cell raises before anything runs) and, given the results
    folder, its entry in the last report."""
    base = Path(exp_path).parent / exp.base
    reported = reported_cells(exp, results_dir)
    cells, errors = [], []
    for dataset in exp.datasets:
        for method in exp.methods:
            for seed in exp.seeds:
                run_dir = Path(runs_root) / exp.name / f"{dataset}-{method}-s{seed}"
                try:
                    overrides = cell_overrides(exp, dataset, method, seed, run_dir)
                    cfg = load_config(base, overrides)
                    # Only where the cell computes weights: the other cells' configs (and fingerprints) stay as they
                    # were. A method entry that names its weighting seed keeps it.
                    if (exp.seed_token_weighting and trains_on_token_weights(cfg)
                            and "kpod.weighting.seed" not in exp.methods[method].overrides):
                        cfg = load_config(base, {**overrides, "kpod.weighting.seed": seed})
                except ConfigError as e:
                    errors.append(f"cell {run_dir.name}: {e}")
                    continue
                cells.append(Cell(method, dataset, seed, run_dir, cfg, reported.get(run_dir.name)))
    if errors:
        raise ConfigError("\n".join(errors))
    return cells


def run_cell(cell: Cell, runner: str, device: str, progress: bool = False) -> dict:
    """Run one cell; returns its status record (also written to the cell's experiment-cell.json)."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cell.config, cell.config_path)
    t0 = time.time()
    status, error = "done", None
    if runner == "subprocess":
        cmd = [sys.executable, "-m", "kpod.cli", "run", str(cell.config_path), "--zero-shot-cache", str(cell.zero_shot_cache),
               "--stage-cache", str(cell.stage_cache)]
        cmd += [] if progress else ["--no-progress"]
        env = dict(os.environ)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        with (cell.run_dir / "experiment.log").open("w") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0:
            status = "failed"
            error = f"exit status {rc}; see {cell.run_dir / 'experiment.log'}: " + _tail(cell.run_dir / "experiment.log")
    else:
        from kpod.pipeline import Pipeline

        try:
            Pipeline(cell.config, progress=progress, zero_shot_cache=cell.zero_shot_cache,
                     stage_cache=cell.stage_cache).run()
        except Exception:  # one failed cell must not stop the grid
            status, error = "failed", traceback.format_exc(limit=4)
    record = {"cell": cell.name, "status": status, "fingerprint": cell.fingerprint(),
              "wall_s": round(time.time() - t0, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "error": error}
    cell.marker.write_text(json.dumps(record, indent=1))
    return record


def _tail(path: Path, n: int = 1500) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n:]


# ----------------------------------------------------------------------------- reading results
def column_of(result: dict, train_dataset: str) -> str:
    """Table column of one evaluation: the dataset, its split if not test, and "(from TRAIN)" when the student was
    trained on another dataset (out of distribution)."""
    col = result["dataset"] + ("" if result["split"] == "test" else f" {result['split']}")
    return col if result["dataset"] == train_dataset else f"{col} (from {train_dataset})"


class Column(NamedTuple):
    dataset: str
    split: str
    trained_on: str | None  # None: in distribution


def parse_column(column: str) -> Column:
    """The parts of a column named by `column_of`: "asdiv all (from gsm8k)" -> ("asdiv", "all", "gsm8k")."""
    match = re.fullmatch(r"([^\s(]+)(?: ([^\s(]+))?(?: \(from ([^\s()]+)\))?", column)
    if not match:
        raise ValueError(f"not a table column (DATASET [SPLIT] [(from TRAIN)]): {column!r}")
    return Column(match.group(1), match.group(2) or "test", match.group(3))


def shown_run_dir(run_dir: Path) -> str:
    """A cell's folder as reports name it: relative to the working folder, else RUNS_ROOT/EXPERIMENT/CELL (a report
    that is shared names no folder of the machine it ran on)."""
    try:
        return str(run_dir.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*run_dir.parts[-3:]))


def read_cell(cell: Cell) -> dict:
    """A cell's record: accuracies per column (trained and zero-shot), the train summary's key numbers."""
    if cell.done_in_report():  # its run folder is gone: the report's entry is the record
        return {**cell.reported, "method": cell.method, "dataset": cell.dataset, "seed": cell.seed}
    rec: dict = {"cell": cell.name, "method": cell.method, "dataset": cell.dataset, "seed": cell.seed,
                 "run_dir": shown_run_dir(cell.run_dir), "fingerprint": cell.fingerprint(),
                 "done": cell.done_in_run_dir()}
    if cell.marker.exists():
        marker = json.loads(cell.marker.read_text())
        rec.update(status=marker["status"], wall_s=marker.get("wall_s"), error=marker.get("error"))
    else:
        rec["status"] = "not run"
    summary_path = cell.run_dir / "summary.json"
    if not rec["done"] or not summary_path.exists():
        return rec
    summary = json.loads(summary_path.read_text())
    train_ds = cell.config.data.dataset
    evaluations = summary.get("results") or []
    if evaluations:  # where the cell ran, from which commit: a shared report must name its machine
        rec["commit"], rec["machine"] = evaluations[0].get("commit"), evaluations[0].get("machine")
    evaluated = evaluation_folders(cell.run_dir)
    for key, out in (("results", "accuracy"), ("zero_shot", "zero_shot_accuracy")):
        rec[out] = {column_of(r, train_ds): {"accuracy": r["accuracy"], "correct": r["correct"], "n": r["n"],
                                             **question_outcomes(r, evaluated)}
                    for r in summary.get(key, [])}
    train_path = cell.run_dir / "train" / "summary.json"
    if train_path.exists():
        t = json.loads(train_path.read_text())
        rec["train"] = {k: t.get(k) for k in ("global_steps", "epochs", "train_wall_s", "final_train_loss",
                                               "train_tokens_per_s", "loss_curve")}
    return rec


_SAME_EVALUATION = ("dataset", "split", "method", "n", "correct")


def evaluation_folders(run_dir: Path) -> list[tuple[dict, Path]]:
    """Each evaluation of a run: its results.json and its folder (which also holds predictions.jsonl)."""
    return [(json.loads(path.read_text()), path.parent) for path in sorted(run_dir.glob("eval/*/results.json"))]


def question_outcomes(result: dict, evaluated: list[tuple[dict, Path]]) -> dict:
    """Which test questions one evaluation answered right, as a string of 0/1 in question order ("outcomes"), and a
    digest of the question ids ("questions"), so that two methods can be compared question by question (a paired
    comparison) even after the run folders are gone. Empty when its predictions cannot be told apart or are missing."""
    matches = [folder for res, folder in evaluated if all(res.get(k) == result.get(k) for k in _SAME_EVALUATION)]
    if len(matches) != 1 or not (matches[0] / "predictions.jsonl").exists():
        return {}
    rows = [json.loads(line) for line in (matches[0] / "predictions.jsonl").read_text().splitlines() if line.strip()]
    if len(rows) != result["n"]:
        return {}
    ids = "\n".join(str(row["id"]) for row in rows)
    return {"outcomes": "".join("1" if row["correct"] else "0" for row in rows),
            "questions": hashlib.sha256(ids.encode()).hexdigest()[:16]}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value; None for none)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def aggregate(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{method: {column: {seeds, values, mean, std, n}}} over the finished cells; `zero_shot` from any cell that
    evaluated the un-distilled student (one value per dataset column and seed)."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    for rec in records:
        for col, r in (rec.get("accuracy") or {}).items():
            values.setdefault(rec["method"], {}).setdefault(col, {})[rec["seed"]] = r["accuracy"]
        for col, r in (rec.get("zero_shot_accuracy") or {}).items():
            values.setdefault(ZERO_SHOT, {}).setdefault(col, {}).setdefault(rec["seed"], r["accuracy"])
    out: dict[str, dict[str, dict]] = {}
    for method, cols in values.items():
        for col, by_seed in cols.items():
            seeds = sorted(by_seed)
            vals = [by_seed[s] for s in seeds]
            mean, std = mean_std(vals)
            out.setdefault(method, {})[col] = {"seeds": seeds, "values": vals, "mean": mean, "std": std, "n": len(vals)}
    return out


# ----------------------------------------------------------------------------- tables
def format_cell(stats: dict | None, expected_n: int) -> str:
    if not stats or stats["n"] == 0:
        return "–"
    text = f"{stats['mean']:.2f}" if stats["n"] == 1 else f"{stats['mean']:.2f} ± {stats['std']:.2f}"
    return text + (f" (n={stats['n']})" if stats["n"] < expected_n else "")


def table_columns(exp: ExperimentConfig, agg: dict, rows: list[str]) -> list[str]:
    """Columns found in the rows: in-distribution ones in the experiment's dataset order, then the OOD ones."""
    found = {col for m in rows for col in agg.get(m, {})}
    order = {d: i for i, d in enumerate(exp.datasets)}
    parts = {c: parse_column(c) for c in found}
    return sorted(found, key=lambda c: (parts[c].trained_on is not None, order.get(parts[c].dataset, len(order)), c))


def row_label(exp: ExperimentConfig, method: str) -> str:
    if method == ZERO_SHOT:
        return ZERO_SHOT_LABEL
    entry = exp.methods.get(method)
    return (entry.label if entry and entry.label else None) or method_label(method)


def markdown_table(exp: ExperimentConfig, spec: TableSpec, agg: dict) -> str:
    columns = spec.columns or table_columns(exp, agg, spec.methods)
    ref_cols = [c for c in columns if any(c in spec.reference.get(m, {}) for m in spec.methods)]
    head = ["method"] + columns + [f"ref. {c}" for c in ref_cols]
    lines = [f"### {spec.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in spec.methods:
        cells = [format_cell(agg.get(method, {}).get(c), len(exp.seeds)) for c in columns]
        refs = [f"{spec.reference[method][c]:.2f}" if c in spec.reference.get(method, {}) else "–" for c in ref_cols]
        lines.append("| " + " | ".join([row_label(exp, method)] + cells + refs) + " |")
    notes = ([f"ref.: {spec.reference_label}."] if ref_cols else []) + ([spec.note] if spec.note else [])
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines)


def mean_of(values) -> str:
    """The mean of the known values, rounded for a table ("–" when none is known)."""
    mean, _ = mean_std([v for v in values if v is not None])
    return "–" if mean is None else f"{mean:.0f}"


def cost_table(exp: ExperimentConfig, records: list[dict]) -> str:
    """What each method's finished cells cost, mean over them: optimiser steps, training and whole-cell wall time
    (a fair comparison states its budgets; times include whatever else ran on the machine meanwhile)."""
    lines = ["### Cost per cell (mean over finished cells)", "",
             "| method | cells | train steps | train s | cell s |", "|---|---|---|---|---|"]
    for method in exp.methods:
        done = [r for r in records if r["method"] == method and r.get("done")]
        if not done:
            continue
        train = [r.get("train") or {} for r in done]
        lines.append(f"| {row_label(exp, method)} | {len(done)} | {mean_of(t.get('global_steps') for t in train)} | "
                     f"{mean_of(t.get('train_wall_s') for t in train)} | {mean_of(r.get('wall_s') for r in done)} |")
    return "\n".join(lines)


def column_entries(records: list[dict], method: str, column: str) -> list[dict]:
    """A method's result in one column from each of its finished cells; for the un-distilled student (ZERO_SHOT),
    the zero-shot result every cell carries (one greedy evaluation, repeated in the cells sharing it)."""
    entries = []
    for rec in records:
        if method == ZERO_SHOT:
            r = (rec.get("zero_shot_accuracy") or {}).get(column)
        else:
            r = (rec.get("accuracy") or {}).get(column) if rec["method"] == method and rec.get("done") else None
        if r:
            entries.append(r)
    return entries


def pooled_accuracy(records: list[dict], method: str, column: str) -> tuple[float | None, int]:
    """A method's accuracy pooled over its finished seeds in one column (a fraction; None without any), and the
    number of test questions (the un-distilled student's: one greedy evaluation, repeated in the cells sharing it)."""
    correct = total = questions = 0
    for r in column_entries(records, method, column):
        if "correct" in r:
            correct, total, questions = correct + r["correct"], total + r["n"], max(questions, r["n"])
    return (correct / total if total else None), questions


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p over n trials (stays inside [0, 1], sound near 0)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def difference_interval(p_a: float, n_a: int, p_b: float, n_b: int, z: float = 1.96) -> tuple[float, float, float]:
    """A's accuracy minus B's, in points, with Newcombe's hybrid score interval (his method 10: Wilson intervals of
    each proportion combined), which keeps its coverage at accuracies near 0 where the plain normal one does not.
    n is the number of distinct test questions: every seed answers the same ones, so seeds do not count as more
    questions (the interval stays wide enough when they agree); the spread between training runs comes on top."""
    lo_a, hi_a = wilson_interval(p_a, n_a, z)
    lo_b, hi_b = wilson_interval(p_b, n_b, z)
    diff = p_a - p_b
    low = diff - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2)
    high = diff + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2)
    return 100 * diff, 100 * low, 100 * high


def per_question_accuracy(records: list[dict], method: str, column: str) -> tuple[np.ndarray, str] | None:
    """Per test question, the fraction of a method's finished seeds that answered it right, and the digest of the
    questions; None unless the answers of every finished seed are on hand, all for the same questions. The zero-shot
    row is one greedy evaluation whatever the seed: its first record stands for it."""
    entries = column_entries(records, method, column)
    if method == ZERO_SHOT:
        entries = entries[:1]
    if not entries or any("outcomes" not in r for r in entries) or len({r["questions"] for r in entries}) > 1:
        return None
    right = np.array([[c == "1" for c in r["outcomes"]] for r in entries], dtype=np.float64)
    return right.mean(axis=0), entries[0]["questions"]


def paired_difference_interval(a: np.ndarray, b: np.ndarray, z: float = 1.96) -> tuple[float, float, float, int]:
    """A's accuracy minus B's, in points, from the same test questions answered by both: the mean of the per-question
    differences with a normal interval from their standard error (questions are the sampled unit, each one's answers
    averaged over seeds first). Pairing removes what both methods share (questions both get right or both miss), so
    it is narrower than an interval between two independent samples when the methods agree on most questions.
    Approximate when few questions differ. Also returns how many questions the two score differently."""
    d = a - b
    se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    diff = float(d.mean())
    return 100 * diff, 100 * (diff - z * se), 100 * (diff + z * se), int(np.count_nonzero(d))


def format_p(p: float) -> str:
    """A p value to three decimals; below 0.001 as such (a permutation test's or an ANOVA's p is never 0)."""
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def sign_flip_p(a: np.ndarray, b: np.ndarray, resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p of a paired permutation test: if the two methods did not differ, each question's difference would
    be as likely with either sign. Exact (every sign pattern) for up to 16 questions scored differently, else from
    `resamples` seeded draws. Unlike the normal interval, it stays sound when only a handful of questions differ
    (4 of 4 in one method's favour: p = 0.125)."""
    d = (a - b)[a != b]
    if d.size == 0:
        return 1.0
    observed = abs(float(d.sum())) - 1e-9  # differences are multiples of 1/seeds: guard the ties against rounding
    if d.size <= 16:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed))
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, resamples, 10_000):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(10_000, resamples - start), d.size))
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed))
    return (hits + 1) / (resamples + 1)


def seed_spread(exp: ExperimentConfig, agg: dict, methods: list[str] | None = None,
                columns: list[str] | None = None) -> list[dict]:
    """Per column, how far the seeds of one method scatter against how far the methods' means do, over the methods
    (default: every method of the experiment) with two seeds or more: the pooled within-method standard deviation, the
    standard deviation of the method means, and a one-way ANOVA of the per-seed accuracies (each seed one training
    run): its p is the chance of an F this large if no method differed. This covers the spread between training runs
    that the intervals over the test questions leave out."""
    from scipy.stats import f as f_distribution

    methods = [m for m in (methods or exp.methods) if m in exp.methods]  # the zero-shot row: one evaluation, no spread
    out = []
    for col in columns or table_columns(exp, agg, methods):
        groups = {m: agg[m][col]["values"] for m in methods if agg.get(m, {}).get(col, {}).get("n", 0) >= 2}
        if len(groups) < 2:
            continue
        values = [np.asarray(v, dtype=np.float64) for v in groups.values()]
        within_ss = sum(float(((v - v.mean()) ** 2).sum()) for v in values)
        within_df = sum(len(v) - 1 for v in values)
        grand = np.concatenate(values).mean()
        between_ss = sum(len(v) * float((v.mean() - grand) ** 2) for v in values)
        between_df = len(values) - 1
        f_value = p_value = None
        if within_ss > 0:
            f_value = (between_ss / between_df) / (within_ss / within_df)
            p_value = float(f_distribution.sf(f_value, between_df, within_df))
        means = [float(v.mean()) for v in values]
        out.append({"column": col, "methods": list(groups), "runs": sum(len(v) for v in values),
                    "seed_std": math.sqrt(within_ss / within_df), "std_of_means": mean_std(means)[1],
                    "f": f_value, "p": p_value, "df": [between_df, within_df]})
    return out


def seed_spread_table(rows: list[dict], heading: str = "### Spread between seeds", explain: bool = True) -> str:
    if not rows:
        return ""
    lines = [heading, "",
             "| column | methods with 2+ seeds | runs | seed-to-seed std | std of method means | ANOVA F | p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f_text = "–" if r["f"] is None else f"{r['f']:.2f} ({r['df'][0]}, {r['df'][1]})"
        p_text = "–" if r["p"] is None else format_p(r["p"])
        lines.append(f"| {r['column']} | {len(r['methods'])} | {r['runs']} | {r['seed_std']:.2f} | "
                     f"{r['std_of_means']:.2f} | {f_text} | {p_text} |")
    if not explain:
        return "\n".join(lines)
    lines += ["", "Seed-to-seed std: the standard deviation between seeds of one method, pooled over the methods with "
                  "two seeds or more; if no method differed, the method means (of k seeds each) would still scatter "
                  "by about that std / sqrt(k). One-way ANOVA over the per-seed accuracies, F (degrees of freedom): p "
                  "is the chance of an F this large when no method differs (approximate: it assumes normal, "
                  "equal spreads). It holds the test questions fixed, since every seed answers the same ones: a small "
                  "p says the methods differ on these questions beyond the spread between training runs, while the "
                  "interval over the test questions above says whether a difference would carry over to other "
                  "questions. A method is shown better only where both agree."]
    return "\n".join(lines)


def seed_accuracies(agg: dict, method: str, column: str) -> dict[int, float]:
    stats = agg.get(method, {}).get(column)
    return dict(zip(stats["seeds"], stats["values"])) if stats else {}


def comparisons(exp: ExperimentConfig, records: list[dict], agg: dict, ref: str | None = None,
                methods: list[str] | None = None, columns: list[str] | None = None) -> list[dict]:
    """Whether `ref` (default the experiment's `compare_with`, KPOD) beats each other method (default: the zero-shot
    row and every method), per column: the difference of pooled accuracies with its interval, a verdict only where the
    interval excludes 0, and in how many of the seeds both finished it was ahead (per-seed accuracies from `agg`, the
    records' `aggregate`). Where both methods' answers per question are in the records, the paired interval
    (`paired_difference_interval`) and the paired test's p (`sign_flip_p`) are added, and the verdict is the test's
    (p < 0.05); else the verdict is the unpaired interval's."""
    ref = ref or exp.compare_with
    if not ref or ref not in exp.methods:
        return []
    others = [m for m in (methods if methods is not None else [ZERO_SHOT, *exp.methods]) if m != ref]
    out = []
    for col in columns or table_columns(exp, agg, [ref]):
        p_ref, n_ref = pooled_accuracy(records, ref, col)
        seeds_ref = seed_accuracies(agg, ref, col)
        by_question_ref = per_question_accuracy(records, ref, col)
        for method in others:
            p, n = pooled_accuracy(records, method, col)
            if p is None or p_ref is None:
                continue
            diff, lo, hi = difference_interval(p_ref, n_ref, p, n)
            seeds = seed_accuracies(agg, method, col)
            if method == ZERO_SHOT:  # one evaluation, the same for every seed
                seeds = {s: next(iter(seeds.values())) for s in seeds_ref}
            shared = sorted(set(seeds_ref) & set(seeds))
            row = {"column": col, "method": method, "against": ref, "difference": diff, "low": lo, "high": hi,
                   "paired_low": None, "paired_high": None, "paired_p": None, "questions_differing": None}
            verdict = "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference"
            by_question = per_question_accuracy(records, method, col)
            if by_question_ref is not None and by_question is not None and by_question_ref[1] == by_question[1]:
                _, row["paired_low"], row["paired_high"], row["questions_differing"] = paired_difference_interval(
                    by_question_ref[0], by_question[0])
                row["paired_p"] = sign_flip_p(by_question_ref[0], by_question[0])
                clear = row["paired_p"] < 0.05
                verdict = "higher" if clear and diff > 0 else "lower" if clear and diff < 0 else "no clear difference"
            row.update(verdict=verdict, seeds_ahead=sum(seeds_ref[s] > seeds[s] for s in shared), seeds_shared=len(shared),
                       questions=n_ref)
            out.append(row)
    return out


def comparison_table(exp: ExperimentConfig, rows: list[dict], heading: str | None = None, explain: bool = True) -> str:
    if not rows:
        return ""
    label = row_label(exp, rows[0]["against"])
    paired = any(r.get("paired_low") is not None for r in rows)  # reports of cells without their answers keep their layout
    lines = [heading or f"### {label} against each method", "",
             f"| column | method | {label} − method (points) | 95 % interval |"
             + (" paired 95 % interval | questions scored differently | paired p |" if paired else "")
             + f" verdict | seeds {label} ahead |",
             "|---|---|---|---|" + ("---|---|---|" if paired else "") + "---|---|"]
    for r in rows:
        extra = ""
        if paired:
            extra = (" – | – | – |" if r.get("paired_low") is None else
                     f" [{r['paired_low']:+.2f}, {r['paired_high']:+.2f}] | {r['questions_differing']} of "
                     f"{r['questions']} | {format_p(r['paired_p'])} |")
        lines.append(f"| {r['column']} | {row_label(exp, r['method'])} | {r['difference']:+.2f} | "
                     f"[{r['low']:+.2f}, {r['high']:+.2f}] |{extra} {r['verdict']} | {r['seeds_ahead']}/{r['seeds_shared']} |")
    if not explain:
        return "\n".join(lines)
    lines += ["", f"Difference of accuracies pooled over each method's finished seeds. 95 % interval: Newcombe's "
                  f"score interval for two proportions over the test questions (the seeds answer the same questions, "
                  f"so they are not counted as more); it covers test-sampling noise, not the spread between training "
                  f"runs. A verdict needs the interval to exclude 0. Seeds ahead: seeds both finished where {label} "
                  f"scored higher (ties count as not)."]
    if paired:
        lines += ["", "Paired 95 % interval: the same difference taken question by question, since both methods "
                      "answered the same questions (each question's answers averaged over the seeds first; mean ± 1.96 "
                      "standard errors over the questions). It leaves out the questions both get right or both miss, "
                      "so it is usually the narrower of the two; approximate when few questions are scored "
                      "differently. Paired p: a sign-flip permutation test over the questions scored differently "
                      "(exact up to 16 of them), which stays sound when they are few; where it is shown, the verdict "
                      "is its (p < 0.05). Both cover the test questions, not the spread between training runs."]
    return "\n".join(lines)


def table_checks(exp: ExperimentConfig, spec: TableSpec, records: list[dict], agg: dict, explain: bool) -> dict:
    """A table's own reference row against each of its other rows, and the ANOVA over its rows (`TableSpec.compare_with`),
    with their markdown."""
    rows = comparisons(exp, records, agg, spec.compare_with, spec.methods, spec.columns)
    spread = seed_spread(exp, agg, spec.methods, spec.columns)
    label = row_label(exp, spec.compare_with)
    parts = [comparison_table(exp, rows, f"#### {spec.title}: {label} against each row", explain),
             seed_spread_table(spread, f"#### {spec.title}: spread between seeds of its rows", explain)]
    if not explain and any(parts):
        parts.append("Difference, interval and ANOVA as in the experiment-wide tables below, over this table's rows.")
    return {"comparison": rows, "seed_spread": spread, "markdown": "\n\n".join(p for p in parts if p)}


def machine_label(machine: dict) -> str:
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    libraries = "".join(f", {lib} {machine[lib]}" for lib in ("transformers", "peft") if machine.get(lib))
    return f"{machine.get('cpu')} ({machine.get('cores')} cores){gpu}, torch {machine.get('torch')}{libraries}"


def provenance_line(records: list[dict]) -> str:
    """The machines and commits the finished cells ran on (cells carried over from an older report may not know)."""
    known = [r for r in records if r.get("machine")]
    machines = sorted({machine_label(r["machine"]) for r in known})
    commits = sorted({r["commit"] for r in known if r.get("commit")})
    return (f"Ran on: {'; '.join(machines) or 'not recorded'}; commits: {', '.join(commits) or 'not recorded'} "
            f"(recorded by {len(known)} of {sum(r.get('done', False) for r in records)} finished cells).")


def write_report(exp: ExperimentConfig, records: list[dict], results_dir: str | Path) -> dict:
    """results/NAME.json and .md, and the plots (when matplotlib is installed); returns the JSON content."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(records)
    specs = exp.tables or [TableSpec(title=exp.name, methods=list(exp.methods))]
    tables = {spec.title: markdown_table(exp, spec, agg) for spec in specs}
    done = sum(r.get("done", False) for r in records)
    scope = "Accuracy (%) on the test split"
    if any(parse_column(c).split == "all" for r in records for c in (r.get("accuracy") or {})):
        scope += " (where a column names no other split; 'all' = train + dev + test)"
    md = [f"# {exp.name}", "",
          f"{scope}, mean ± sample std over seeds {exp.seeds}; (n=k) marks a mean over fewer "
          f"seeds. {done}/{len(records)} cells finished.", ""]
    compared = comparisons(exp, records, agg)
    spread = seed_spread(exp, agg)
    within_tables = {}
    for spec in specs:
        md += [tables[spec.title], ""]
        if spec.compare_with:
            within_tables[spec.title] = table_checks(exp, spec, records, agg, explain=not (compared and spread))
            md += [within_tables[spec.title].pop("markdown"), ""]
    if compared:
        md += [comparison_table(exp, compared), ""]
    if spread:
        md += [seed_spread_table(spread), ""]
    md += [cost_table(exp, records), ""]
    md += [provenance_line(records), ""]
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        md += ["Failed cells: " + ", ".join(r["cell"] for r in failed), ""]
    out = {"experiment": exp.name, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
           "config": exp.model_dump(mode="json"), "cells": records, "aggregate": agg, "tables": tables,
           "comparison": compared, "seed_spread": spread, "table_comparisons": within_tables}
    (results_dir / f"{exp.name}.json").write_text(json.dumps(out, indent=1, default=str))
    (results_dir / f"{exp.name}.md").write_text("\n".join(md))
    try:
        from kpod.experiment_plots import plot_accuracy, plot_learning_curves

        out["plots"] = [str(p) for p in (plot_accuracy(exp, agg, results_dir / f"{exp.name}-accuracy.png",
                                                       row_label),
                                         plot_learning_curves(exp, records, results_dir / f"{exp.name}-loss.png",
                                                              row_label)) if p]
    except ImportError:
        log.info("matplotlib is not installed: no plots (pip install kpod[plots])")
    return out


# ----------------------------------------------------------------------------- the whole experiment
def _run_cells(todo: list[Cell], runner: str, device: str, progress: bool, jobs: int, fail_fast: bool) -> list[dict]:
    """Run the cells, `jobs` at a time, in order; after a failure under `fail_fast` no further cell starts."""
    stop = threading.Event()

    def one(k: int, cell: Cell) -> dict | None:
        if stop.is_set():
            return None
        log.info("[%d/%d] %s: running", k, len(todo), cell.name)
        record = run_cell(cell, runner, device, progress)
        log.info("[%d/%d] %s: %s in %.0f s", k, len(todo), cell.name, record["status"], record["wall_s"])
        if record["status"] == "failed":
            log.error("%s failed: %s", cell.name, record["error"])
            if fail_fast:
                stop.set()
        return record

    if jobs == 1:  # in this thread: an in-process cell may need the main thread (signal handlers)
        records = [one(k, cell) for k, cell in enumerate(todo, 1)]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # the threads only wait: each cell is its own process
            records = [f.result() for f in [pool.submit(one, k, cell) for k, cell in enumerate(todo, 1)]]
    return [r for r in records if r is not None]


def run_experiment(path: str | Path, *, runs_root: str | Path = "runs", results_dir: str | Path = "results",
                   runner: str | None = None, device: str | None = None, methods: list[str] | None = None,
                   seeds: list[int] | None = None, dry_run: bool = False, report_only: bool = False,
                   fail_fast: bool = False, progress: bool = False, jobs: int = 1) -> dict:
    """Run the unfinished cells (optionally only some methods/seeds), then write the report over all cells.

    `jobs` > 1 runs that many cells at once, each in its own process (a large GPU runs several small students side by
    side); they start seed by seed, so the first seed of every method comes first."""
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    exp = load_experiment(path)
    for m in methods or []:
        if m not in exp.methods:
            raise ConfigError(f"{path}: no method {m!r} in this experiment; it has {', '.join(exp.methods)}")
    cells = plan_cells(exp, path, runs_root, results_dir)
    if (device or exp.device) == "cuda" and not dry_run and not report_only:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for, but torch sees no GPU here")
    selected = [c for c in cells if (not methods or c.method in methods) and (not seeds or c.seed in seeds)]
    todo = [c for c in selected if not c.is_done()]
    log.info("%s: %d cells, %d selected, %d to run", exp.name, len(cells), len(selected), len(todo))
    ran: list[dict] = []
    if dry_run:
        return {"experiment": exp.name, "cells": [{"cell": c.name, "done": c.is_done(), "selected": c in selected,
                                                   "kept_from_report": c.done_in_report()} for c in cells]}
    if not report_only and todo:
        from kpod.pipeline import Pipeline

        shared = sum(Pipeline(c.config, progress=False, zero_shot_cache=c.zero_shot_cache).share_finished_zero_shot()
                     for c in cells if c.done_in_run_dir() and c.config.eval.zero_shot)
        if shared:
            log.info("%s: %d zero-shot evaluations of finished cells shared with the cells to run", exp.name, shared)
        runner = runner or exp.runner
        if jobs > 1 and runner != "subprocess":
            raise ConfigError("jobs > 1 runs each cell in its own process: it needs runner 'subprocess'")
        if jobs > 1:  # seed by seed, so that an interrupted grid has whole seeds of every method
            todo = sorted(todo, key=lambda c: c.seed)
        ran = _run_cells(todo, runner, device or exp.device, progress, jobs, fail_fast)
    out = write_report(exp, [read_cell(c) for c in cells], results_dir)
    out["ran"] = ran
    return out
