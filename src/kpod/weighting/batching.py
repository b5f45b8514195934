"""Tensor plumbing of the weighting stage: padding examples, sampling prefix lengths, and assembling the
answer predictor's input from a masked rationale (the inside of Eq. 5), all batched without per-token loops.

Predictor row layout (causal LM), one row per (example, sampled prefix length k):

    [question][first k rationale tokens, masked][answer cue, e.g. " Therefore, the answer is"][answer]

The loss is on the answer tokens only. Rows are left-padded (the padding is moved in front) so that every
row ends with its answer and only the last few positions need logits.

An encoder-decoder predictor (the paper's FlanT5) reads the same row up to the cue in its encoder (the caller
ends the cue with the end token: `kpod.curriculum.stages.answer_cue_ids`), and its decoder is scored on the
answer: decoder input [decoder start][answer without its last token].
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
    labels: torch.Tensor  # [R, T] long, IGNORE_INDEX except on answer tokens; encoder-decoder: [R, L_a]
    answer_width: int  # max answer length: the logits of the last answer_width + 1 positions suffice
    decoder_input_ids: torch.Tensor | None = None  # encoder-decoder only: [R, L_a], start token + answer[:-1]


def build_predictor_batch(
    batch: PaddedExamples,
    keep: torch.Tensor,
    prefix_lengths: torch.Tensor,
    token_embedding: nn.Embedding,
    answer_cue_ids: torch.Tensor,
    representation: MaskRepresentation,
    mask_vector: torch.Tensor | None = None,
    decoder_start_token_id: int | None = None,
) -> PredictorBatch:
    """Assemble the predictor input for masked rationale prefixes (Eq. 5), differentiable in `keep`.

    batch: B examples (ids right-padded). keep: [B, L_r] float, 1 = kept (straight-through Gumbel sample,
    or ones for no mask). prefix_lengths: [B, P]; row b * P + p uses the first prefix_lengths[b, p]
    rationale tokens (a prefix of the original rationale, also for 'drop'). answer_cue_ids: [C] long.
    mask_vector: [D], needed for 'mask_embedding' and 'drop'. A rationale token's input embedding becomes
    keep * emb + (1 - keep) * mask_vector ('mask_embedding'), keep * emb ('zero'); 'drop' removes tokens
    with keep < 0.5 and mixes the others as 'mask_embedding' does, so that they carry the gradient.
    decoder_start_token_id: given for an encoder-decoder predictor, whose encoder then reads the row up to the
    cue and whose decoder is scored on the answer (labels [R, L_a], right-padded with IGNORE_INDEX).
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
    answer_labels = expand(torch.where(a_present, batch.answer, IGNORE_INDEX))  # [R, L_a]
    seq2seq = decoder_start_token_id is not None

    present_parts = [expand(q_present), r_present.reshape(rows, l_r), torch.ones(rows, l_c, dtype=torch.bool, device=device)]
    embed_parts = [expand(emb(batch.question)), expand(rationale_emb), emb(cue)[None].expand(rows, l_c, -1)]
    if seq2seq:  # the decoder reads the answer: teacher forcing from the start token
        labels = answer_labels
        start = torch.full((rows, 1), decoder_start_token_id, dtype=torch.long, device=device)
        decoder_input_ids = torch.cat([start, expand(batch.answer)[:, :-1]], dim=1)
    else:  # the answer follows the cue in the same row
        present_parts.append(expand(a_present))
        embed_parts.append(expand(emb(batch.answer)))
        labels = torch.cat(
            [torch.full((rows, l_q + l_r + l_c), IGNORE_INDEX, dtype=torch.long, device=device), answer_labels], dim=1
        )
        decoder_input_ids = None
    present = torch.cat(present_parts, dim=1)  # [R, T]
    embeds = torch.cat(embed_parts, dim=1)  # [R, T, D]

    # Left-pad: a stable sort moves absent positions to the front and keeps the order of the rest.
    order = torch.argsort(present.to(torch.int8), dim=1, stable=True)
    width = int(present.sum(dim=1).max())
    order = order[:, -width:]
    present = torch.gather(present, 1, order)
    if not seq2seq:
        labels = torch.gather(labels, 1, order)
    embeds = torch.gather(embeds, 1, order[..., None].expand(-1, -1, embeds.shape[-1]))
    embeds = torch.where(present[..., None], embeds, torch.zeros((), dtype=embeds.dtype, device=device))
    attention_mask = present.long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return PredictorBatch(embeds, attention_mask, position_ids, labels, l_a, decoder_input_ids)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed answer negative log-likelihood per row (causal LM).

    logits: [R, K, V], the logits of the last K positions; labels: [R, T], T >= K. Logits at position t
    predict the label at t + 1, so logits[:, :-1] are scored against the last K - 1 labels. Returns [R].
    """
    return aligned_nll(logits[:, :-1], labels[:, -(logits.shape[1] - 1) :])


def aligned_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood per row of targets [R, K] under logits [R, K, V] that predict them in place
    (an encoder-decoder's decoder logits); IGNORE_INDEX targets count nothing. Returns [R]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    valid = targets != IGNORE_INDEX
    picked = torch.gather(log_probs, 2, targets.clamp(min=0)[..., None]).squeeze(-1)
    return -(picked * valid).sum(dim=1)
