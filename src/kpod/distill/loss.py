"""The token-weighted distillation loss (paper Eq. 1 for plain CoT distillation, Eq. 15 for KPOD).

Plain distillation is the special case with every weight 1 and no given steps. For decoder-only students the LM head
runs only at supervised positions: prompt and given-step positions need hidden states (they are context) but no
logits, which saves the vocabulary projection and the softmax over most of the sequence. A model wrapped for data
parallel training (DDP, FSDP, DeepSpeed) must run its step through the wrapper's forward; it gets the same logits
from its forward with a boolean `logits_to_keep` mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
NORMALIZATIONS = ("tokens", "weights")


def weighted_nll(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, normalization: str) -> torch.Tensor:
    """sum_j w_j * -log p(target_j) / Z.

    logits: (N, V) at the N supervised positions; targets: (N,); weights: (N,).
    Z = N ("tokens": a token-level mean, as Hugging Face computes it) or sum_j w_j ("weights": a weighted mean, which
    keeps the loss scale independent of how small the learned weights are).
    """
    if targets.numel() == 0:
        raise ValueError("batch has no supervised token: every target position is ignored (-100)")
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    if normalization == "tokens":
        return (weights * nll).sum() / targets.numel()
    if normalization == "weights":
        return (weights * nll).sum() / weights.sum().clamp_min(1e-8)
    raise ValueError(f"loss normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _causal_parts(model):
    """(backbone returning hidden states, output head, logit soft-cap) of a causal LM, through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix, None)
    head = base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return body, head, softcap


def backbone(model) -> torch.nn.Module:
    """The module that turns token ids into hidden states (what `torch.compile` speeds up), through a peft wrapper."""
    body = _causal_parts(model)[0]
    if body is None:
        raise ValueError(f"cannot find the backbone of {type(model).__name__} (no base_model_prefix attribute)")
    return body


def is_parallel_wrapper(model) -> bool:
    """True for a DDP / FSDP / DeepSpeed wrapper: its forward (not its inner modules) must run the step, or the
    gradients are not synchronised (DDP) or the parameters not gathered (FSDP, ZeRO-3)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        return True
    if torch.distributed.is_available():
        from torch.distributed import fsdp

        return isinstance(model, tuple(c for c in (getattr(fsdp, "FullyShardedDataParallel", None),
                                                   getattr(fsdp, "FSDPModule", None)) if c is not None))
    return False


def _wrapped_supervised_logits(model, batch, supervised: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the supervised positions through the wrapper's forward: a boolean (B, L) `logits_to_keep`
    (Hugging Face causal LMs) keeps the LM head to those positions, in the same row-major order."""
    keep = torch.cat([supervised, supervised.new_zeros(supervised.shape[0], 1)], dim=1)  # position t predicts t+1
    inputs = _model_inputs(batch)
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # a forward without logits_to_keep
        logits = model(**inputs).logits
    return logits if logits.dim() == 2 else logits[:, :-1][supervised]  # full (B, L, V) logits: select


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A padded batch goes in with its attention mask; a packed one with position ids and no mask. No KV cache: a
    training forward needs none, and with one transformers does not look for packed sequences."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def supervised_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, V), targets (N,), weights (N,)) at the N supervised positions of a decoder-only batch.

    batch: input_ids, labels, weights, all (B, L), and attention_mask (padded batches) or position_ids (packed
    batches, see `PackingCollator`); position t predicts token t+1.
    """
    labels, weights = batch["labels"][:, 1:], batch["weights"][:, 1:]
    supervised = labels != IGNORE
    if is_parallel_wrapper(model):
        return _wrapped_supervised_logits(model, batch, supervised), labels[supervised], weights[supervised]
    body, head, softcap = _causal_parts(model)
    if body is None or head is None:  # unknown layout: full logits, then select
        logits = model(**_model_inputs(batch)).logits[:, :-1]
        return logits[supervised], labels[supervised], weights[supervised]
    hidden = body(**_model_inputs(batch)).last_hidden_state
    logits = head(hidden[:, :-1][supervised])
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits, labels[supervised], weights[supervised]


def causal_lm_loss(model, batch: dict[str, torch.Tensor], normalization: str = "tokens") -> torch.Tensor:
    """Loss of a decoder-only student. batch: input_ids, attention_mask, labels, weights, all (B, L)."""
    return weighted_nll(*supervised_logits(model, batch), normalization)


def seq2seq_loss(model, batch: dict[str, torch.Tensor], normalization: str = "tokens") -> torch.Tensor:
    """Loss of an encoder-decoder student; decoder_input_ids carry the full target, so given steps stay visible."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
    )
    supervised = batch["labels"] != IGNORE
    return weighted_nll(out.logits[supervised], batch["labels"][supervised], batch["weights"][supervised], normalization)


def reference_causal_lm_loss(model, batch: dict[str, torch.Tensor], normalization: str = "tokens") -> torch.Tensor:
    """The same loss through the model's full logits: the slow path that tests compare the fast one with."""
    logits = model(**_model_inputs(batch)).logits[:, :-1]
    labels, weights = batch["labels"][:, 1:], batch["weights"][:, 1:]
    supervised = labels != IGNORE
    return weighted_nll(logits[supervised], labels[supervised], weights[supervised], normalization)
