"""`kpod experiment`: a grid of methods x datasets x seeds, each cell one `kpod run`, then the paper's tables.

    kpod experiment configs/experiments/svamp-paper.yaml             # run what is missing, then report
    kpod experiment configs/experiments/svamp-paper.yaml --dry-run   # list the cells and their state
    kpod experiment configs/experiments/svamp-paper.yaml --method kpod --seed 0   # run only these cells
    kpod experiment configs/experiments/svamp-paper.yaml --report-only   # tables from the finished cells

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

Modules: `config` (the experiment file), `cells` (planning, running and reading one cell), `stats` (intervals, the
paired test, the ANOVA), `report` (the tables, `write_report`), `plots`; this one runs the grid.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kpod.config import ConfigError
from kpod.experiment.cells import Cell, Column, column_of, parse_column, plan_cells, read_cell, run_cell
from kpod.experiment.config import ZERO_SHOT, ZERO_SHOT_LABEL, ExperimentConfig, TableSpec, load_experiment
from kpod.experiment.report import write_report

__all__ = ["Cell", "Column", "ExperimentConfig", "TableSpec", "ZERO_SHOT", "ZERO_SHOT_LABEL", "column_of",
           "load_experiment", "parse_column", "plan_cells", "run_experiment", "write_report"]

log = logging.getLogger("kpod.experiment")


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
    for seed in seeds or []:
        if seed not in exp.seeds:
            raise ConfigError(f"{path}: no seed {seed} in this experiment; it has {', '.join(map(str, exp.seeds))}")
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
