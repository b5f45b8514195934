"""The torch dataset and collator behind every distillation trainer.

Each item is one encoded rationale. Two per-example settings shape what it supervises:
- `given_steps[i]` (KPOD's c_i): the first c_i rationale steps are teacher-forced input without loss;
- `token_weights[i]`: a weight per rationale token (KPOD's w_j); the answer sentence and end token weigh 1.
Both are plain arrays that a curriculum rewrites between stages; the encoded token ids are never copied.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from kpod.distill.examples import EncodedExample

IGNORE = -100


class DistillDataset(Dataset):
    def __init__(
        self,
        examples: list[EncodedExample],
        *,
        seq2seq: bool = False,
        token_weights: list[np.ndarray] | None = None,
        decoder_start_token_id: int | None = None,
    ):
        if not examples:
            raise ValueError("no training examples: every rationale was filtered or skipped (see the data report)")
        if token_weights is not None:
            if len(token_weights) != len(examples):
                raise ValueError(f"{len(token_weights)} token-weight rows for {len(examples)} examples")
            for ex, w in zip(examples, token_weights):
                if len(w) != ex.answer_start:
                    raise ValueError(f"{ex.key}: {len(w)} token weights for {ex.answer_start} rationale tokens")
        if seq2seq and decoder_start_token_id is None:
            raise ValueError("seq2seq students need decoder_start_token_id")
        self.examples = examples
        self.seq2seq = seq2seq
        self.decoder_start_token_id = decoder_start_token_id
        self.token_weights = token_weights
        self.given_steps = np.zeros(len(examples), dtype=np.int64)
        self.lengths = [len(e) if not seq2seq else len(e.prompt_ids) + len(e.target_ids) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def target_labels_and_weights(self, i: int) -> tuple[list[int], list[float]]:
        """Labels over the target tokens (IGNORE on given steps) and their loss weights."""
        ex = self.examples[i]
        c = int(self.given_steps[i])
        if not 0 <= c < max(1, ex.n_steps):
            raise ValueError(f"{ex.key}: given_steps {c} outside [0, {ex.n_steps - 1}]")
        first_supervised = ex.step_spans[c][0] if c > 0 else 0
        labels = [IGNORE] * first_supervised + ex.target_ids[first_supervised:]
        weights = np.ones(len(ex.target_ids), dtype=np.float32)
        if self.token_weights is not None:
            weights[: ex.answer_start] = self.token_weights[i]
        weights[:first_supervised] = 0.0
        return labels, weights.tolist()

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        labels, weights = self.target_labels_and_weights(i)
        if self.seq2seq:
            return {
                "input_ids": ex.prompt_ids,
                "decoder_input_ids": [self.decoder_start_token_id] + ex.target_ids[:-1],
                "labels": labels,
                "weights": weights,
            }
        n_prompt = len(ex.prompt_ids)
        return {
            "input_ids": ex.prompt_ids + ex.target_ids,
            "labels": [IGNORE] * n_prompt + labels,
            "weights": [0.0] * n_prompt + weights,
        }


class PadCollator:
    """Dynamic right padding to the longest item of the batch."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        out = {}
        fill = {"input_ids": self.pad, "decoder_input_ids": self.pad, "labels": IGNORE, "weights": 0.0}
        for key in items[0]:
            width = max(len(it[key]) for it in items)
            dtype = torch.float32 if key == "weights" else torch.long
            t = torch.full((len(items), width), fill[key], dtype=dtype)
            for r, it in enumerate(items):
                t[r, : len(it[key])] = torch.tensor(it[key], dtype=dtype)
            out[key] = t
        mask = torch.zeros_like(out["input_ids"])
        for r, it in enumerate(items):
            mask[r, : len(it["input_ids"])] = 1
        out["attention_mask"] = mask
        return out
