"""The cells of an experiment (one `kpod run` each): their configs, whether they are finished, running one, and
reading one's results back into a record for the report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kpod.baselines.registry import method_names, trains_on_token_weights
from kpod.config import ConfigError, RunConfig, dump_config, load_config
from kpod.experiment.config import ExperimentConfig


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
        if t.get("train_wall_s_all_attempts") is not None:  # a resumed cell's cost is every attempt's
            rec["train"]["train_wall_s"] = t["train_wall_s_all_attempts"]
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
