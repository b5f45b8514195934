"""Every path of a run directory, built in one place; stages never invent paths.

runs/NAME/
  config.yaml                 resolved config
  data/rationales.jsonl       kept training rationales (kpod format)      data/report.json  counts and drops
  data/examples.jsonl         tokenised examples with step spans
  train/checkpoint-*/         Trainer checkpoints (resume points)         train/final/  adapter or model
  train/summary.json          time, tokens/s, loss curve
  eval/LABEL/predictions.jsonl, eval/LABEL/results.json
  stages.json                 which stages are done, with the config fingerprint they ran with
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def rationales(self) -> Path:
        return self.data_dir / "rationales.jsonl"

    @property
    def data_report(self) -> Path:
        return self.data_dir / "report.json"

    @property
    def examples(self) -> Path:
        return self.data_dir / "examples.jsonl"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def final_model(self) -> Path:
        return self.train_dir / "final"

    @property
    def train_summary(self) -> Path:
        return self.train_dir / "summary.json"

    @property
    def weighting_dir(self) -> Path:
        return self.root / "weighting"

    @property
    def token_weights(self) -> Path:
        return self.weighting_dir / "weights.jsonl"

    @property
    def curriculum_dir(self) -> Path:
        return self.root / "curriculum"

    def eval_dir(self, label: str) -> Path:
        return self.root / "eval" / label

    def predictions(self, label: str) -> Path:
        return self.eval_dir(label) / "predictions.jsonl"

    def eval_results(self, label: str) -> Path:
        return self.eval_dir(label) / "results.json"
