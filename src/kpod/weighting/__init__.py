"""Rationale token weighting (KPOD Sec. 3.3): learn which rationale tokens the answer depends on.

Train once, before distillation; the result is one weight in (0, 1) per rationale token, stored as the
JSONL artefact of `kpod.weighting.artefact` and read by the step difficulty and the distillation loss.

    weights, stats = train_token_weighting(examples, embedding, predictor, WeightingConfig(), cue_ids)
"""

from kpod.weighting.artefact import (
    WeightedRationale,
    load_weights_jsonl,
    readable_token,
    save_weights_jsonl,
    token_strings,
)
from kpod.weighting.config import WeightingConfig, WeightingExample
from kpod.weighting.module import TokenWeightingModule, gumbel_keep_mask, temperature_at
from kpod.weighting.report import write_weighting_report
from kpod.weighting.summary import TOKEN_CLASSES, classify_token, summarize_weights
from kpod.weighting.train import fit_weighting_module, predict_token_weights, train_token_weighting
from kpod.weighting.viz import select_rows, weights_to_html, write_weights_html, write_weights_png

__all__ = [
    "TOKEN_CLASSES",
    "TokenWeightingModule",
    "WeightedRationale",
    "WeightingConfig",
    "WeightingExample",
    "classify_token",
    "fit_weighting_module",
    "gumbel_keep_mask",
    "load_weights_jsonl",
    "predict_token_weights",
    "readable_token",
    "save_weights_jsonl",
    "select_rows",
    "summarize_weights",
    "temperature_at",
    "token_strings",
    "train_token_weighting",
    "weights_to_html",
    "write_weights_html",
    "write_weighting_report",
    "write_weights_png",
]
