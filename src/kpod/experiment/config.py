"""The experiment file: a base run config, datasets, methods (each a set of `--set` style overrides), seeds and the
tables to write (the layout is in `kpod.experiment`'s docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from kpod.baselines.registry import method_names
from kpod.config import ConfigError, Strict

ZERO_SHOT = "zero_shot"  # the pseudo-method of the un-distilled student's results
ZERO_SHOT_LABEL = "no distillation (zero-shot CoT)"


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
