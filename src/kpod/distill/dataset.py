"""The torch dataset and collator behind every distillation trainer.

Each item is one encoded rationale, supervised on its whole target; `token_weights[i]` gives a weight per
rationale token (KPOD's w_j), the answer sentence and end token weigh 1. KPOD's given steps are applied per batch
by `hide_given_steps` at the moment a step runs (so prefetching a batch can never use a stale stage): the first
c_i steps become teacher-forced input without loss. The encoded token ids are never copied.
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
        self.lengths = [len(e) if not seq2seq else len(e.prompt_ids) + len(e.target_ids) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def first_supervised(self, indices, given_steps) -> torch.Tensor:
        """Index into each target of the first supervised token when the first c_i steps are given.

        indices: (B,) example indices; given_steps: (B,) c_i. c_i = 0 supervises the whole target.
        """
        out = []
        for i, c in zip(indices, given_steps):
            ex, c = self.examples[int(i)], int(c)
            if not 0 <= c < max(1, ex.n_steps):
                raise ValueError(f"{ex.key}: given_steps {c} outside [0, {ex.n_steps - 1}]")
            out.append(ex.step_spans[c][0] if c > 0 else 0)
        return torch.tensor(out, dtype=torch.long)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        weights = np.ones(len(ex.target_ids), dtype=np.float32)
        if self.token_weights is not None:
            weights[: ex.answer_start] = self.token_weights[i]
        weights = weights.tolist()
        if self.seq2seq:
            return {
                "input_ids": ex.prompt_ids,
                "decoder_input_ids": [self.decoder_start_token_id] + ex.target_ids[:-1],
                "labels": list(ex.target_ids),
                "weights": weights,
                "target_start": 0,
                "index": i,
            }
        n_prompt = len(ex.prompt_ids)
        return {
            "input_ids": ex.prompt_ids + ex.target_ids,
            "labels": [IGNORE] * n_prompt + ex.target_ids,
            "weights": [0.0] * n_prompt + weights,
            "target_start": n_prompt,
            "index": i,
        }


def hide_given_steps(batch: dict[str, torch.Tensor], first_supervised: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return a batch whose labels/weights ignore each example's target tokens before `first_supervised` (B,).

    The tokens stay in the input (teacher forcing); only their loss is removed. Works on padded batches (example
    b is row b, starting at column 0) and on packed ones (`row` and `offset` say where each example lies).
    """
    labels, weights = batch["labels"].clone(), batch["weights"].clone()
    device = labels.device
    n = len(first_supervised)
    rows = batch["row"].to(device) if "row" in batch else torch.arange(n, device=device)
    offsets = batch["offset"].to(device) if "offset" in batch else torch.zeros(n, dtype=torch.long, device=device)
    ends = offsets + batch["target_start"].to(device) + first_supervised.to(device)  # first visible label column
    hidden = torch.zeros_like(labels, dtype=torch.bool)
    for r, start, end in zip(rows.tolist(), offsets.tolist(), ends.tolist()):
        hidden[r, start:end] = True
    labels[hidden] = IGNORE
    weights[hidden] = 0.0
    return {**batch, "labels": labels, "weights": weights}


class PadCollator:
    """Dynamic right padding to the longest item of the batch."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        out = {key: torch.tensor([it[key] for it in items]) for key in ("target_start", "index")}
        fill = {"input_ids": self.pad, "decoder_input_ids": self.pad, "labels": IGNORE, "weights": 0.0}
        for key in fill.keys() & items[0].keys():
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


class PackingCollator:
    """Packs a batch's examples into as few rows of at most `max_row_tokens` tokens as first-fit allows.

    Each example keeps its own position ids (0, 1, ...) and no attention mask is passed, so the model builds a
    block-diagonal causal mask from the position ids (transformers' packed-sequence support): examples in one row
    never see each other. Row tails are filled with pad tokens that form a segment of their own and carry no loss.
    The batch still holds the same examples as a padded one, so the loss is the same; what changes is how many
    pad tokens are computed. `row` and `offset` (per example) say where each example lies, for `hide_given_steps`.
    An example longer than `max_row_tokens` gets a row of its own. Decoder-only students only.
    """

    def __init__(self, pad_token_id: int, max_row_tokens: int):
        if max_row_tokens < 1:
            raise ValueError(f"max_row_tokens must be >= 1, got {max_row_tokens}")
        self.pad = pad_token_id
        self.max_row_tokens = max_row_tokens

    def rows_for(self, lengths: list[int]) -> list[list[int]]:
        """First-fit decreasing: a list of rows, each the item indices it holds, in placing order."""
        rows: list[list[int]] = []
        used: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            for r, u in enumerate(used):
                if u + lengths[i] <= self.max_row_tokens:
                    rows[r].append(i)
                    used[r] += lengths[i]
                    break
            else:
                rows.append([i])
                used.append(lengths[i])
        return rows

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        if "decoder_input_ids" in items[0]:
            raise ValueError("sequence packing is for decoder-only students; seq2seq batches are padded")
        lengths = [len(it["input_ids"]) for it in items]
        rows = self.rows_for(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        weights = torch.zeros((len(rows), width), dtype=torch.float32)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        row_of, offset_of = [0] * len(items), [0] * len(items)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                it, n = items[i], lengths[i]
                ids[r, at : at + n] = torch.tensor(it["input_ids"])
                labels[r, at : at + n] = torch.tensor(it["labels"])
                weights[r, at : at + n] = torch.tensor(it["weights"])
                positions[r, at : at + n] = torch.arange(n)
                row_of[i], offset_of[i] = r, at
                at += n
            positions[r, at:] = torch.arange(width - at)  # the pad tail: a segment of its own
        return {
            "input_ids": ids, "labels": labels, "weights": weights, "position_ids": positions,
            "target_start": torch.tensor([it["target_start"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
            "row": torch.tensor(row_of), "offset": torch.tensor(offset_of),
            "num_tokens": torch.tensor(sum(lengths)),
        }
