"""Step difficulty (paper Eq. 8), measured with the student before distillation.

    d_k = - sum_{j in step k} softmax_{j' in step k}(w)_j * log P(r_j | r_<j, x; theta_student)

One batched forward pass per group of rationales gives every target token's log-probability; the per-step sums
are then pure array work. With `uniform=True` the softmax of the token weights is replaced by a plain mean (the
paper's "w.o.-sig-dif" ablation).

    >>> nll = target_token_nll(model, examples, batch_size=16)      # list of (len(target_ids),) arrays
    >>> d = step_difficulties(nll[i][:ex.answer_start], weights[i], ex.step_spans)
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from kpod.distill.dataset import DistillDataset, PadCollator
from kpod.distill.examples import EncodedExample
from kpod.distill.loss import supervised_logits
from kpod.models import is_seq2seq


def step_difficulties(token_nll: np.ndarray, token_weights: np.ndarray | None, spans, uniform: bool = False) -> np.ndarray:
    """Difficulty of each step. token_nll, token_weights: (n_rationale_tokens,); spans: [(start, end), ...].

    Within a step, weights are turned into a distribution by a softmax (Eq. 8), so a step's difficulty is a
    weighted mean of its tokens' negative log-likelihoods. An empty step has difficulty 0.
    """
    out = np.zeros(len(spans), dtype=np.float64)
    for k, (a, b) in enumerate(spans):
        if b <= a:
            continue
        nll = token_nll[a:b].astype(np.float64)
        if uniform or token_weights is None:
            out[k] = nll.mean()
        else:
            w = token_weights[a:b].astype(np.float64)
            p = np.exp(w - w.max())
            out[k] = float((p / p.sum()) @ nll)
    return out


@torch.no_grad()
def target_token_nll(model, tokenizer, examples: list[EncodedExample], batch_size: int = 16,
                     progress: bool = True) -> list[np.ndarray]:
    """-log P(target token | prefix, question) for every target token of every example, in one pass each."""
    model.eval()
    seq2seq = is_seq2seq(model)
    ds = DistillDataset(examples, seq2seq=seq2seq, decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None))
    collate = PadCollator(tokenizer.pad_token_id)
    order = sorted(range(len(examples)), key=lambda i: ds.lengths[i])  # similar lengths, little padding
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(examples)
    for b in tqdm(range(0, len(order), batch_size), desc="step difficulty", disable=not progress, mininterval=2):
        idx = order[b: b + batch_size]
        batch = {k: v.to(device) for k, v in collate([ds[i] for i in idx]).items()}
        if seq2seq:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=batch["decoder_input_ids"]).logits
            supervised = batch["labels"] != -100
            logits, targets = logits[supervised], batch["labels"][supervised]
        else:  # logits only at target positions
            logits, targets, _ = supervised_logits(model, batch)
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none").cpu().numpy()
        # Rows come out in batch order, each with exactly its target tokens (nothing is given at this point).
        start = 0
        for i in idx:
            n = len(examples[i].target_ids)
            out[i] = nll[start: start + n]
            start += n
    return out  # type: ignore[return-value]
