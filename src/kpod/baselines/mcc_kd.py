"""MCC-KD, multi-CoT consistent knowledge distillation (Chen et al., Findings of EMNLP 2023): several rationales
per question, and a consistency loss that makes the student's answer distributions agree across them.

    L = L_CE (every rationale, Eq. 1) + baselines.mcc_kd.consistency_weight * D(p_a, p_b)

For each pair (a, b) of rationales of the same question in a batch, p_a and p_b are the student's next-token
distributions at the answer-sentence positions ("Therefore, the answer is 32." and the end token), aligned from the
end of the target; D is KL(p_a||p_b) + KL(p_b||p_a) (MCC-KD) or Jensen-Shannon, averaged over positions and pairs.
`QuestionPairSampler` puts two rationales of one question next to each other, so with an even batch size every
batch consists of such pairs, of similar length (baselines.mcc_kd.group_pairs_by_length). MCC-KD also chose
diverse rationales by n-gram overlap; here every kept rationale is used (the releases have 2-3 per question).
See docs/methods.md.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from kpod.baselines.common import SupervisedTokens, TermLoggingTrainer, supervised_tokens, token_nll, weighted_mean
from kpod.baselines.registry import MethodContext, MethodSpec, TrainingSetup
from kpod.baselines.scotd import rationales_per_question


# ----------------------------------------------------------------------------- divergences
def bidirectional_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """mean_k [KL(p_a,k || p_b,k) + KL(p_b,k || p_a,k)]; logits_a, logits_b: (K, V) at K aligned positions."""
    la, lb = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    return ((la.exp() - lb.exp()) * (la - lb)).sum(-1).mean()  # KL(a||b) + KL(b||a) in one sum


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """mean_k JS(p_a,k, p_b,k) = mean_k [KL(p_a||m) + KL(p_b||m)] / 2 with m = (p_a + p_b) / 2; (K, V) each."""
    la, lb = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    lm = torch.logsumexp(torch.stack([la, lb]), 0) - np.log(2.0)
    return 0.5 * ((la.exp() * (la - lm)).sum(-1) + (lb.exp() * (lb - lm)).sum(-1)).mean()


DIVERGENCES = {"bidirectional_kl": bidirectional_kl, "js": js_divergence}


# ----------------------------------------------------------------------------- pairs inside a batch
def pair_rows(question_codes: list[int], example_index: list[int]) -> list[tuple[int, int]]:
    """Pairs of batch rows holding different rationales of the same question: (r0, r1), (r2, r3), ...; an odd
    one out is paired with the group's first row."""
    groups: dict[int, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for row, (q, i) in enumerate(zip(question_codes, example_index)):
        if i not in seen:  # the same example twice (sampler padding) is no pair
            seen.add(i)
            groups[q].append(row)
    pairs = []
    for rows in groups.values():
        pairs += [(rows[k], rows[k + 1]) for k in range(0, len(rows) - 1, 2)]
        if len(rows) % 2 and len(rows) >= 3:
            pairs.append((rows[-1], rows[0]))
    return pairs


def aligned_answer_tokens(tokens: SupervisedTokens, row_a: int, row_b: int, answer_start_a: int,
                          answer_start_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat token indices (K,), (K,) of the answer sentences of two rows, aligned from their ends, keeping only
    positions whose target tokens agree."""
    ia = ((tokens.rows == row_a) & (tokens.offsets >= answer_start_a)).nonzero(as_tuple=True)[0]
    ib = ((tokens.rows == row_b) & (tokens.offsets >= answer_start_b)).nonzero(as_tuple=True)[0]
    k = min(len(ia), len(ib))
    ia, ib = ia[len(ia) - k:], ib[len(ib) - k:]
    same = tokens.targets[ia] == tokens.targets[ib]
    return ia[same], ib[same]


def consistency_loss(tokens: SupervisedTokens, pairs: list[tuple[int, int]], answer_start: list[int],
                     divergence: str = "bidirectional_kl") -> torch.Tensor:
    """Mean over `pairs` of the divergence between the two rows' answer-token distributions; 0 with no pair.

    answer_start: (B,) first answer-sentence token of each row's target (index into its target_ids).
    """
    fn = DIVERGENCES[divergence]
    terms = []
    for a, b in pairs:
        ia, ib = aligned_answer_tokens(tokens, a, b, answer_start[a], answer_start[b])
        if len(ia):
            terms.append(fn(tokens.logits[ia], tokens.logits[ib]))
    return torch.stack(terms).mean() if terms else tokens.logits.sum() * 0.0


# ----------------------------------------------------------------------------- batching
class QuestionPairSampler(Sampler[int]):
    """Indices in pairs of rationales of one question, pairs in random order (seeded per epoch).

    A question with m >= 2 rationales gives floor(m/2) pairs, an odd one out is paired with another rationale of the
    same question; questions with one rationale are paired with each other (no consistency term for them). The
    length is the same every epoch, and with an even batch size no pair is split between batches.

    With `lengths` (tokens per example) and `pairs_per_batch`, the pairs are length-grouped as transformers'
    `LengthGroupedSampler` groups examples: shuffled, then sorted by their longer rationale within mega-batches, so
    that a batch holds pairs of similar length. Random pairs pad every batch to its longest rationale; on the SVAMP
    releases 38 % of a batch of 8 was padding, 15 % with grouping (bench/mcc_kd_pairing.py).
    """

    def __init__(self, question_ids: list[str], seed: int = 0, lengths: list[int] | None = None,
                 pairs_per_batch: int | None = None):
        if (lengths is None) != (pairs_per_batch is None):
            raise ValueError("give lengths and pairs_per_batch together (length grouping) or neither")
        if lengths is not None and len(lengths) != len(question_ids):
            raise ValueError(f"{len(lengths)} lengths for {len(question_ids)} examples")
        groups: dict[str, list[int]] = defaultdict(list)
        for i, q in enumerate(question_ids):
            groups[q].append(i)
        self.groups = list(groups.values())
        self.seed = seed
        self.epoch = 0
        self.lengths = lengths
        self.pairs_per_batch = pairs_per_batch
        singles = sum(len(g) == 1 for g in self.groups)
        self.length = sum(len(g) + len(g) % 2 for g in self.groups if len(g) > 1) + singles + singles % 2

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def units(self) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        units, singles = [], []
        for group in self.groups:
            idx = [int(i) for i in rng.permutation(group)]
            if len(idx) == 1:
                singles.append(idx[0])
                continue
            units += [(idx[k], idx[k + 1]) for k in range(0, len(idx) - 1, 2)]
            if len(idx) % 2:
                units.append((idx[-1], idx[int(rng.integers(0, len(idx) - 1))]))
        singles = [int(i) for i in rng.permutation(singles)] if singles else []
        if len(singles) % 2:
            singles.append(singles[int(rng.integers(0, len(singles)))])
        units += [(singles[k], singles[k + 1]) for k in range(0, len(singles), 2)]
        if self.lengths is None:
            return [units[int(k)] for k in rng.permutation(len(units))]
        # get_length_grouped_indices draws its own shuffle; its generator is seeded from the same (seed, epoch).
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))
        unit_lengths = [max(self.lengths[a], self.lengths[b]) for a, b in units]
        return [units[k] for k in get_length_grouped_indices(unit_lengths, self.pairs_per_batch, generator=generator)]

    def __iter__(self):
        for a, b in self.units():
            yield a
            yield b


class MccKdTrainer(TermLoggingTrainer):
    def __init__(self, *args, consistency_weight: float, divergence: str = "bidirectional_kl",
                 group_pairs_by_length: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.per_device_train_batch_size % 2:
            raise ValueError("mcc_kd batches pairs of rationales: the batch size must be even")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
        examples = self.train_dataset.examples
        codes = {q: k for k, q in enumerate(dict.fromkeys(e.question_id for e in examples))}
        self.question_codes = np.array([codes[e.question_id] for e in examples])
        self.answer_start = np.array([e.answer_start for e in examples])
        self.consistency_weight = consistency_weight
        self.divergence = divergence
        self.group_pairs_by_length = group_pairs_by_length

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        question_ids = [e.question_id for e in ds.examples]
        if self.group_pairs_by_length and self.args.train_sampling_strategy == "group_by_length":
            # pairs per optimizer step, grouped as DistillTrainer groups its examples
            pairs = self.examples_per_optimizer_step // 2
            return QuestionPairSampler(question_ids, seed=self.args.seed, lengths=ds.lengths, pairs_per_batch=pairs)
        return QuestionPairSampler(question_ids, seed=self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.count_tokens(inputs)
        tokens = supervised_tokens(model, inputs)
        ce = weighted_mean(token_nll(tokens), tokens.weights, self.loss_normalization)
        index = inputs["index"].cpu().numpy()
        pairs = pair_rows(self.question_codes[index].tolist(), index.tolist())
        consistency = consistency_loss(tokens, pairs, self.answer_start[index].tolist(), self.divergence)
        self.record(loss_ce=ce, loss_consistency=consistency, pairs_per_batch=len(pairs))
        loss = ce + self.consistency_weight * consistency
        return (loss, None) if return_outputs else loss


def setup(ctx: MethodContext) -> TrainingSetup:
    counts = rationales_per_question(ctx.examples)
    if max(counts, default=0) < 2:
        raise ValueError("mcc_kd: every question has a single rationale; the consistency loss needs several per "
                         "question (use a source with several, and data.rationales_per_question: null)")
    s = ctx.cfg.baselines.mcc_kd
    report = {"examples": len(ctx.examples), "questions_by_rationale_count": dict(sorted(counts.items())),
              "same_question_pairs_per_epoch": sum(count * ((n + 1) // 2) for n, count in counts.items() if n > 1)}
    return TrainingSetup(ctx.examples, MccKdTrainer, report=report,
                         trainer_kwargs={"consistency_weight": s.consistency_weight, "divergence": s.divergence,
                                         "group_pairs_by_length": s.group_pairs_by_length})


METHOD = MethodSpec("mcc_kd", "MCC-KD", setup, settings=lambda cfg: cfg.baselines.mcc_kd.fingerprint_fields(),
                    source="Chen et al. 2023, MCC-KD: Multi-CoT Consistent Knowledge Distillation (Findings of EMNLP)")
