"""Tensor plumbing of the weighting stage: padding examples, sampling prefix lengths, and assembling the
answer predictor's input from a masked rationale (the inside of Eq. 5), all batched without per-token loops.

Predictor row layout (causal LM), one row per (example, sampled prefix length k):

    [question][first k rationale tokens, masked][answer cue, e.g. " Therefore, the answer is"][answer]

The loss is on the answer tokens only. Rows are left-padded (the padding is moved in front) so that every
row ends with its answer and only the last few positions need logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kpod.weighting.config import MaskRepresentation, WeightingConfig, WeightingExample

IGNORE_INDEX = -100


@dataclass
class PaddedExamples:
    """Right-padded id tensors of a set of examples: ids [N, L_max] (pad 0) and lengths [N] per segment."""

    question: torch.Tensor
    question_lengths: torch.Tensor
    rationale: torch.Tensor
    rationale_lengths: torch.Tensor
    answer: torch.Tensor
    answer_lengths: torch.Tensor

    def select(self, index: torch.Tensor) -> "PaddedExamples":
        """The rows `index` [B], trimmed to the longest selected item of each segment."""

        def take(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            picked = lengths[index]
            width = max(int(picked.max()), 1) if len(picked) else 1
            return ids[index, :width], picked

        q, ql = take(self.question, self.question_lengths)
        r, rl = take(self.rationale, self.rationale_lengths)
        a, al = take(self.answer, self.answer_lengths)
        return PaddedExamples(q, ql, r, rl, a, al)

    def repeat_each(self, times: int) -> "PaddedExamples":
        """Every row `times` times in a row: [r0, r0, ..., r1, r1, ...]."""
        return PaddedExamples(*(getattr(self, f).repeat_interleave(times, dim=0) for f in self.__dataclass_fields__))

    def to(self, device: torch.device) -> "PaddedExamples":
        return PaddedExamples(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pad_id_lists(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with 0: returns ids [N, max(len, 1)] (long) and lengths [N] (long)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.zeros(len(sequences), max(int(lengths.max()) if len(sequences) else 0, 1), dtype=torch.long)
    for row, seq in enumerate(sequences):  # once per data set, not in the training hot path
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids, lengths


def pad_examples(examples: list[WeightingExample], config: WeightingConfig) -> PaddedExamples:
    """Truncate to the configured maxima (questions keep their tail, rationales and answers their head) and pad."""
    q, ql = pad_id_lists([e.question_ids[-config.max_question_tokens :] for e in examples])
    r, rl = pad_id_lists([e.rationale_ids[: config.max_rationale_tokens] for e in examples])
    a, al = pad_id_lists([e.answer_ids[: config.max_answer_tokens] for e in examples])
    return PaddedExamples(q, ql, r, rl, a, al)


def sample_prefix_lengths(
    rationale_lengths: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Prefix lengths k ~ Uniform{0, ..., L_i}, independently, with replacement.

    rationale_lengths: [B] long. Returns [B, num_samples] long. Every k of the L_i + 1 prefixes of Eq. 5
    has probability 1 / (L_i + 1), so the mean of f(k) over the samples is an unbiased estimate of the mean
    of f over all prefixes, and (L_i + 1) times it of the sum in Eq. 5.
    """
    uniform = torch.rand(
        (len(rationale_lengths), num_samples), generator=generator, device=rationale_lengths.device
    )
    k = torch.floor(uniform * (rationale_lengths[:, None] + 1).float()).long()
    return torch.minimum(k, rationale_lengths[:, None])  # guards the u -> 1 rounding edge


@dataclass
class PredictorBatch:
    """Inputs of one predictor forward pass, R rows of T positions, left-padded."""

    inputs_embeds: torch.Tensor  # [R, T, D]
    attention_mask: torch.Tensor  # [R, T] long
    position_ids: torch.Tensor  # [R, T] long
    labels: torch.Tensor  # [R, T] long, IGNORE_INDEX except on answer tokens
    answer_width: int  # max answer length: the logits of the last answer_width + 1 positions suffice


def build_predictor_batch(
    batch: PaddedExamples,
    keep: torch.Tensor,
    prefix_lengths: torch.Tensor,
    token_embedding: nn.Embedding,
    answer_cue_ids: torch.Tensor,
    representation: MaskRepresentation,
    mask_vector: torch.Tensor | None = None,
) -> PredictorBatch:
    """Assemble the predictor input for masked rationale prefixes (Eq. 5), differentiable in `keep`.

    batch: B examples (ids right-padded). keep: [B, L_r] float, 1 = kept (straight-through Gumbel sample,
    or ones for no mask). prefix_lengths: [B, P]; row b * P + p uses the first prefix_lengths[b, p]
    rationale tokens (a prefix of the original rationale, also for 'drop'). answer_cue_ids: [C] long.
    mask_vector: [D], needed for 'mask_embedding' and 'drop'. A rationale token's input embedding becomes
    keep * emb + (1 - keep) * mask_vector ('mask_embedding'), keep * emb ('zero'); 'drop' removes tokens
    with keep < 0.5 and mixes the others as 'mask_embedding' does, so that they carry the gradient.
    """
    device = batch.rationale.device
    b, p = prefix_lengths.shape
    rows = b * p
    expand = lambda t: t.repeat_interleave(p, dim=0)  # [B, ...] -> [B*P, ...]

    emb = token_embedding
    dtype = emb.weight.dtype
    keep = keep.to(dtype)
    rationale_emb = emb(batch.rationale)  # [B, L_r, D]
    if representation in ("mask_embedding", "drop"):
        if mask_vector is None:
            raise ValueError(f"mask_representation={representation!r} needs a mask_vector")
        rationale_emb = keep[..., None] * rationale_emb + (1.0 - keep[..., None]) * mask_vector.to(dtype)
    else:  # 'zero'
        rationale_emb = keep[..., None] * rationale_emb

    l_q, l_r, l_a = batch.question.shape[1], batch.rationale.shape[1], batch.answer.shape[1]
    cue = answer_cue_ids.to(device)
    l_c = len(cue)

    # Which positions of each segment exist in each row.
    q_present = torch.arange(l_q, device=device)[None, :] < batch.question_lengths[:, None]  # [B, L_q]
    positions = torch.arange(l_r, device=device)
    r_present = positions[None, None, :] < prefix_lengths[:, :, None]  # [B, P, L_r]
    if representation == "drop":
        r_present = r_present & (keep.detach() > 0.5)[:, None, :]
    a_present = torch.arange(l_a, device=device)[None, :] < batch.answer_lengths[:, None]  # [B, L_a]

    present = torch.cat(
        [
            expand(q_present),
            r_present.reshape(rows, l_r),
            torch.ones(rows, l_c, dtype=torch.bool, device=device),
            expand(a_present),
        ],
        dim=1,
    )  # [R, T]
    embeds = torch.cat(
        [
            expand(emb(batch.question)),
            expand(rationale_emb),
            emb(cue)[None].expand(rows, l_c, -1),
            expand(emb(batch.answer)),
        ],
        dim=1,
    )  # [R, T, D]
    labels = torch.cat(
        [
            torch.full((rows, l_q + l_r + l_c), IGNORE_INDEX, dtype=torch.long, device=device),
            expand(torch.where(a_present, batch.answer, IGNORE_INDEX)),
        ],
        dim=1,
    )

    # Left-pad: a stable sort moves absent positions to the front and keeps the order of the rest.
    order = torch.argsort(present.to(torch.int8), dim=1, stable=True)
    width = int(present.sum(dim=1).max())
    order = order[:, -width:]
    present = torch.gather(present, 1, order)
    labels = torch.gather(labels, 1, order)
    embeds = torch.gather(embeds, 1, order[..., None].expand(-1, -1, embeds.shape[-1]))
    embeds = torch.where(present[..., None], embeds, torch.zeros((), dtype=embeds.dtype, device=device))
    attention_mask = present.long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return PredictorBatch(embeds, attention_mask, position_ids, labels, l_a)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed answer negative log-likelihood per row.

    logits: [R, K, V], the logits of the last K positions; labels: [R, T], T >= K. Logits at position t
    predict the label at t + 1, so logits[:, :-1] are scored against the last K - 1 labels. Returns [R].
    """
    targets = labels[:, -(logits.shape[1] - 1) :]
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    valid = targets != IGNORE_INDEX
    picked = torch.gather(log_probs, 2, targets.clamp(min=0)[..., None]).squeeze(-1)
    return -(picked * valid).sum(dim=1)
