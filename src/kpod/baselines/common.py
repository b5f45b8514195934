"""Pieces the baseline and curriculum trainers share: the supervised tokens of a batch with the row and target
position of each, per-row sums, a normalised weighted mean that tolerates an empty selection, and a trainer that
logs its extra loss terms next to the loss.

    >>> tok = supervised_tokens(model, batch)            # logits (N, V) only at supervised positions
    >>> nll = token_nll(tok)                             # (N,)
    >>> per_row = row_sums(nll.detach(), tok.rows, batch["input_ids"].shape[0])
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kpod.distill.dataset import IGNORE
from kpod.distill.loss import NORMALIZATIONS, supervised_logits
from kpod.distill.trainer import DistillTrainer


@dataclass
class SupervisedTokens:
    """The N supervised tokens of a batch, in row-major order.

    logits: (N, V); targets, weights: (N,); rows: (N,) batch row of each token; offsets: (N,) index of the token in
    its example's `target_ids` (0 = first target token).
    """

    logits: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    rows: torch.Tensor
    offsets: torch.Tensor


def supervised_tokens(model, batch: dict[str, torch.Tensor]) -> SupervisedTokens:
    """One forward pass; logits only where a label is supervised (decoder-only: the LM head runs only there).

    batch: input_ids, attention_mask, labels, weights (B, L), target_start (B,); seq2seq adds decoder_input_ids.
    """
    if "decoder_input_ids" in batch:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=batch["decoder_input_ids"])
        mask = batch["labels"] != IGNORE
        rows, cols = mask.nonzero(as_tuple=True)
        return SupervisedTokens(out.logits[mask], batch["labels"][mask], batch["weights"][mask], rows, cols)
    logits, targets, weights = supervised_logits(model, batch)
    # Position t of the shifted labels holds the label of input position t + 1.
    rows, cols = (batch["labels"][:, 1:] != IGNORE).nonzero(as_tuple=True)
    offsets = cols + 1 - batch["target_start"].to(cols.device)[rows]
    return SupervisedTokens(logits, targets, weights, rows, offsets)


def token_nll(tokens: SupervisedTokens) -> torch.Tensor:
    """-log p(target) of every supervised token: (N,) float32."""
    if tokens.targets.numel() == 0:
        raise ValueError("batch has no supervised token: every target position is ignored (-100)")
    return F.cross_entropy(tokens.logits.float(), tokens.targets, reduction="none")


def row_sums(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Sum of `values` (N,) per batch row: (num_rows,). Rows without a token get 0."""
    out = torch.zeros(num_rows, dtype=values.dtype, device=values.device)
    return out.index_add(0, rows, values)


def weighted_mean(nll: torch.Tensor, weights: torch.Tensor, normalization: str,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j w_j nll_j / Z over the tokens where `mask` (N,) is true; Z = their count ("tokens") or their weight sum
    ("weights"), as in `kpod.distill.loss.weighted_nll`. No selected token gives a zero that still carries the graph
    (so a batch whose examples are all left out gives zero gradients, not an error)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"loss normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if mask is not None:
        if not bool(mask.any()):
            return nll.sum() * 0.0
        nll, weights = nll[mask], weights[mask]
    if normalization == "tokens":
        return (weights * nll).sum() / nll.numel()
    return (weights * nll).sum() / weights.sum().clamp_min(1e-8)


class TermLoggingTrainer(DistillTrainer):
    """A DistillTrainer whose subclasses compute their own loss and log its parts (e.g. `loss_factual`) with it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._terms: dict[str, list[float]] = defaultdict(list)

    def count_tokens(self, inputs) -> None:
        self.tokens_seen += int(inputs["attention_mask"].sum())
        if "decoder_input_ids" in inputs:
            self.tokens_seen += int((inputs["labels"] != IGNORE).sum())

    def record(self, **terms: float | torch.Tensor) -> None:
        for name, value in terms.items():
            self._terms[name].append(float(value.detach()) if torch.is_tensor(value) else float(value))

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # training logs: add the mean of each term since the last log
            for name, values in self._terms.items():
                if values:
                    logs[name] = round(sum(values) / len(values), 4)
            self._terms.clear()
        super().log(logs, *args, **kwargs)
