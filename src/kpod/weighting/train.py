"""Training and inference of the rationale token weighting module (KPOD Sec. 3.3, Eqs. 4-7).

One step, for a batch of rationales:
  1. w = sigmoid(module(r)) and a Gumbel-Softmax sample m over {keep, mask} (Eq. 4, annealed temperature):
     the relaxed sample by default, the hard straight-through one with `hard_mask=True`;
  2. for a few sampled prefix lengths k per rationale, the predictor reads [question][r[m]_<k][cue][answer]
     through `inputs_embeds` and is scored on the answer tokens: L_p (Eq. 5) (with `answer_prefixes='whole'`,
     not the paper's, k is the whole rationale's length); an encoder-decoder predictor (the paper's FlanT5)
     reads [question][r[m]_<k][cue] in its encoder and is scored on the answer in its decoder;
  3. L_m = mean_j m_j (or sum_j m_j, Eq. 6) and L = L_p + alpha * L_m (Eq. 7); module, mask vector and the
     trainable predictor parameters take one Adam step.
With `gradient_estimator='score_function'` (not the paper's) steps 1-2 draw several hard masks per rationale,
score each with forward passes only, and the module follows the score-function gradient of L_p
(`score_function_surrogate`) plus the exact gradient of the expected L_m.
After training, the weights are the deterministic w_j = sigmoid(f_w(e_j)) (no sampling).

    weights, stats = train_token_weighting(examples, student.get_input_embeddings(), predictor,
                                           WeightingConfig(), answer_cue_ids=tok(" Therefore, the answer is").input_ids)

The predictor must already answer from question + rationale (a pre-trained LM, or `predictor_warmup_steps`):
with an untrained predictor the answer loss carries no signal yet, the mask loss masks every token within
a few dozen steps, and a rationale with every token masked gives the predictor nothing to learn from.
It should also not be able to memorise answers (a few epochs, LoRA rather than full fine-tuning): a
predictor that knows the answer from the question alone lets the module mask everything.

Defaults were chosen on the synthetic keypoint task of `tests/test_weighting.py` (a 2-layer, 64-wide Llama
pre-trained to answer with the two digits hidden among ten filler tokens; success = digits w > 0.9,
filler w < 0.1 after 100-200 steps); the reasons are in the field descriptions of `WeightingConfig`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from kpod.models import add_lora, is_seq2seq
from kpod.weighting.batching import (
    PaddedExamples,
    aligned_nll,
    answer_nll,
    build_predictor_batch,
    pad_examples,
    pad_id_lists,
    sample_prefix_lengths,
)
from kpod.weighting.config import WeightingConfig, WeightingExample
from kpod.weighting.module import TokenWeightingModule, gumbel_keep_mask, temperature_at

log = logging.getLogger(__name__)

# Below this spread over all rationale tokens the module has learned one weight for every token, not which tokens
# matter (seen with Gemma 3 270M as predictor: std 0.000 at 0.986, or every token at the lower bound). The weighted
# loss then scales all tokens alike, so a run should say so rather than go on as if KPOD's weights were in place.
NEARLY_CONSTANT_WEIGHT_STD = 0.01


class WeightingFit:
    """What `fit_weighting_module` returns: the trained module, the mask vector, the predictor, the stats."""

    def __init__(self, module: TokenWeightingModule, mask_vector: torch.Tensor | None, predictor: nn.Module, stats: dict):
        self.module = module
        self.mask_vector = mask_vector
        self.predictor = predictor
        self.stats = stats


def prepare_predictor(predictor: nn.Module, config: WeightingConfig) -> nn.Module:
    """Copy (if configured) and set which predictor parameters train: none, LoRA adapters, or all."""
    decoder_start_id(predictor)  # an encoder-decoder predictor must say how its decoder starts
    if config.copy_predictor and config.predictor_mode != "frozen":
        predictor = copy.deepcopy(predictor)
    if config.predictor_mode == "lora":
        predictor = add_lora(predictor, config.lora_rank, config.lora_alpha, dropout=0.0, targets="all-linear")
    elif config.predictor_mode == "frozen":
        predictor.requires_grad_(False)
    else:
        predictor.requires_grad_(True)
    predictor.train(config.predictor_mode != "frozen")
    return predictor


def decoder_start_id(predictor: nn.Module) -> int | None:
    """The decoder start token of an encoder-decoder predictor (build_predictor_batch's `decoder_start_token_id`);
    None for a causal LM."""
    if not is_seq2seq(predictor):
        return None
    if predictor.config.decoder_start_token_id is None:
        raise ValueError("the encoder-decoder predictor's config has no decoder_start_token_id")
    return int(predictor.config.decoder_start_token_id)


def answer_nll_fn(predictor: nn.Module) -> Callable:
    """A function (PredictorBatch) -> summed answer NLL per row [R], for a causal LM or an encoder-decoder.

    A causal LM computes the logits of the last answer_width + 1 positions only: all the weighting loss reads.
    """
    if decoder_start_id(predictor) is not None:

        def seq2seq_forward(batch) -> torch.Tensor:
            out = predictor(
                inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                decoder_input_ids=batch.decoder_input_ids, use_cache=False,
            )
            return aligned_nll(out.logits, batch.labels)

        return seq2seq_forward
    base = predictor.get_base_model() if hasattr(predictor, "get_base_model") else predictor
    keeps_last = "logits_to_keep" in inspect.signature(type(base).forward).parameters

    def causal_forward(batch) -> torch.Tensor:
        k = min(batch.answer_width + 1, batch.inputs_embeds.shape[1])
        extra = {"logits_to_keep": k} if keeps_last else {}
        out = predictor(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
            position_ids=batch.position_ids, use_cache=False, **extra,
        )
        return answer_nll(out.logits[:, -k:], batch.labels)

    return causal_forward


@torch.no_grad()
def mean_input_embedding(embedding: nn.Module, chunk: int = 16384) -> torch.Tensor:
    """The mean, over the vocabulary, of what the embedding layer hands the model (float32, [D]).

    Not the table's mean: some layers scale their rows on the way out (Gemma's by sqrt(hidden size), about 25 for
    Gemma 3 270M), and an "average token" at the table's scale would be far smaller than every real input.
    """
    weight = embedding.weight
    if type(embedding) is nn.Embedding:  # rows come out as stored
        return weight.detach().float().mean(dim=0)
    total = torch.zeros(weight.shape[1], dtype=torch.float64, device=weight.device)
    for start in range(0, weight.shape[0], chunk):
        ids = torch.arange(start, min(start + chunk, weight.shape[0]), device=weight.device)
        total += embedding(ids).double().sum(dim=0)
    return (total / weight.shape[0]).float()


def weighting_loss(
    answer_nll_per_row: torch.Tensor,
    keep: torch.Tensor,
    rationale_lengths: torch.Tensor,
    alpha: float,
    normalisation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = L_p + alpha * L_m (Eq. 7), averaged over the batch.

    answer_nll_per_row: [B * P] summed answer NLL of each (example, prefix) row; keep: [B, L] sample m
    (padding included); rationale_lengths: [B]. 'per_token': L_p = mean over the P prefixes,
    L_m = mean_j m_j; 'sum': L_p = (L + 1) * mean over prefixes (unbiased for the sum over all L + 1
    prefixes of Eq. 5), L_m = sum_j m_j (Eq. 6). Returns (total, L_p, L_m), each a scalar.
    """
    b = len(rationale_lengths)
    lp = answer_nll_per_row.view(b, -1).mean(dim=1)  # [B]
    real = (torch.arange(keep.shape[1], device=keep.device)[None, :] < rationale_lengths[:, None]).to(keep.dtype)
    kept = (keep * real).sum(dim=1)  # [B]
    if normalisation == "sum":
        lp = lp * (rationale_lengths + 1).to(lp.dtype)
        lm = kept
    else:
        lm = kept / rationale_lengths.clamp(min=1).to(kept.dtype)
    lp, lm = lp.mean(), lm.mean()
    return lp + alpha * lm, lp, lm


def score_function_surrogate(
    answer_nll_rows: torch.Tensor,
    keep: torch.Tensor,
    keep_logits: torch.Tensor,
    prefix_lengths: torch.Tensor,
    rationale_lengths: torch.Tensor,
    normalisation: str,
) -> torch.Tensor:
    """A scalar whose gradient in `keep_logits` estimates that of E_m[L_p] (the score-function estimator).

    answer_nll_rows: [B, S, P] answer NLL of rationale b under mask sample s, read up to prefix p; keep: [B, S, L]
    the hard 0/1 samples, drawn from Bernoulli(sigmoid(keep_logits)); keep_logits: [B, L]; prefix_lengths: [B, P].
    Each row's loss, less the mean loss of the other S - 1 samples of the same rationale and prefix (a baseline
    that leaves the estimate unbiased), multiplies the log-probability of the mask tokens that row read: tokens
    past the prefix did not change that loss, so leaving them out only removes noise. Normalised as
    `weighting_loss` normalises L_p.
    """
    samples = answer_nll_rows.shape[1]
    loss = answer_nll_rows.detach()
    baseline = (loss.sum(dim=1, keepdim=True) - loss) / (samples - 1)
    token_log_prob = keep * F.logsigmoid(keep_logits)[:, None] + (1.0 - keep) * F.logsigmoid(-keep_logits)[:, None]
    width = keep_logits.shape[1]
    read = (torch.arange(width, device=keep.device)[None, None, :] < prefix_lengths[:, :, None]).to(keep.dtype)
    row_log_prob = torch.einsum("bsl,bpl->bsp", token_log_prob, read)  # [B, S, P]
    per_example = ((loss - baseline) * row_log_prob).mean(dim=(1, 2))  # [B]
    if normalisation == "sum":
        per_example = per_example * (rationale_lengths + 1).to(per_example.dtype)
    return per_example.mean()


def fit_weighting_module(
    examples: list[WeightingExample],
    embedding: nn.Embedding,
    predictor: nn.Module,
    config: WeightingConfig | None = None,
    answer_cue_ids: list[int] | tuple[int, ...] = (),
    progress: bool = True,
    on_step: Callable[[int, TokenWeightingModule], None] | None = None,
) -> WeightingFit:
    """Train the module jointly with the answer predictor (Eqs. 4-7); see the module docstring.

    on_step(step, module), if given, is called after every joint step (not the warm-up), e.g. to trace how the
    weights of chosen tokens move; it runs outside autograd and must leave the module as it found it.
    """
    config = config or WeightingConfig()
    usable = [e for e in examples if e.rationale_ids and e.answer_ids]  # nothing to weight or to score otherwise
    if not usable:
        raise ValueError("no example has both rationale and answer tokens")
    if config.max_train_examples is not None and len(usable) > config.max_train_examples:
        chosen = torch.randperm(len(usable), generator=torch.Generator().manual_seed(config.seed))
        usable = [usable[i] for i in sorted(chosen[: config.max_train_examples].tolist())]
    device = next(predictor.parameters()).device
    # 'frozen' trains no copy: remember the caller's flags and mode to give the model back as it came.
    caller_state = ([p.requires_grad for p in predictor.parameters()], predictor.training)
    caller_predictor = predictor
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        predictor = prepare_predictor(predictor, config)
        module = TokenWeightingModule(embedding, config).to(device)
        token_embedding = predictor.get_input_embeddings()
        mask_vector = None
        trainable = list(module.parameters())
        score_function = config.gradient_estimator == "score_function"
        if config.mask_representation in ("mask_embedding", "drop"):
            # Start at the mean embedding: an "average token" the predictor can already read.
            mask_vector = nn.Parameter(mean_input_embedding(token_embedding))
            if not score_function:  # forward passes only there: no gradient reaches the vector
                trainable.append(mask_vector)
        predictor_params = [p for p in predictor.parameters() if p.requires_grad]
        groups = [{"params": trainable, "lr": config.lr}]
        if predictor_params:
            groups.append({"params": predictor_params, "lr": config.predictor_lr})
        optimiser = torch.optim.Adam(groups)

        data = pad_examples(usable, config).to(device)
        cue = torch.tensor(list(answer_cue_ids), dtype=torch.long, device=device)
        order_rng = torch.Generator().manual_seed(config.seed)
        noise_rng = torch.Generator(device=device).manual_seed(config.seed + 1)
        score_answers = answer_nll_fn(predictor)
        decoder_start = decoder_start_id(predictor)

        steps_per_epoch = math.ceil(len(usable) / config.batch_size)
        total_steps = config.max_steps or config.epochs * steps_per_epoch
        warmup_steps = config.predictor_warmup_steps if predictor_params else 0
        batches = _batch_indices(len(usable), config.batch_size, order_rng)
        stats: dict = {"loss": [], "answer_loss": [], "mask_loss": [], "keep_ratio": [], "warmup_loss": []}
        if not score_function:  # the score-function estimator draws hard masks: no Gumbel temperature to record
            stats["temperature"] = []

        def answer_prefix_lengths(batch: PaddedExamples) -> torch.Tensor:
            """[B, P] prefix lengths the predictor answers from (see WeightingConfig.answer_prefixes)."""
            if config.answer_prefixes == "whole":
                return batch.rationale_lengths[:, None].clone()
            return sample_prefix_lengths(batch.rationale_lengths, config.num_prefix_lengths, noise_rng)

        def step(batch: PaddedExamples, keep: torch.Tensor, alpha: float) -> tuple[torch.Tensor, ...]:
            prefixes = answer_prefix_lengths(batch)
            inputs = build_predictor_batch(
                batch, keep, prefixes, token_embedding, cue, config.mask_representation, mask_vector, decoder_start
            )
            nll = score_answers(inputs)
            return weighting_loss(nll, keep, batch.rationale_lengths, alpha, config.mask_loss_normalisation)

        def score_function_step(batch: PaddedExamples, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
            samples = config.score_function_samples
            probs = torch.sigmoid(logits)
            with torch.no_grad():
                uniform = torch.rand((len(probs), samples, probs.shape[1]), generator=noise_rng, device=device)
                keep = (uniform < probs[:, None]).to(probs.dtype)  # [B, S, L] hard samples of Bernoulli(w)
                prefixes = answer_prefix_lengths(batch)
                inputs = build_predictor_batch(
                    batch.repeat_each(samples), keep.flatten(0, 1), prefixes.repeat_interleave(samples, dim=0),
                    token_embedding, cue, config.mask_representation, mask_vector, decoder_start,
                )
                nll = score_answers(inputs).view(len(probs), samples, -1)
            # L_p of the drawn masks (no gradient) and L_m as the expected keep ratio (exact gradient) ...
            loss, lp, lm = weighting_loss(
                nll.flatten(), probs, batch.rationale_lengths, config.alpha,
                config.mask_loss_normalisation,
            )
            # ... plus the score-function estimate of L_p's gradient.
            surrogate = score_function_surrogate(
                nll, keep, logits, prefixes, batch.rationale_lengths, config.mask_loss_normalisation
            )
            return loss, lp, lm, surrogate, keep.mean(dim=1)

        def update(loss: torch.Tensor) -> None:
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            # Clipped apart: the predictor's (much larger) gradient must not shrink the module's step.
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            if predictor_params:
                torch.nn.utils.clip_grad_norm_(predictor_params, config.grad_clip)
            optimiser.step()

        start = time.perf_counter()
        for _ in tqdm(range(warmup_steps), desc="predictor warm-up", disable=not progress):
            batch = data.select(next(batches))
            full = torch.ones_like(batch.rationale, dtype=torch.float32)  # no mask: the format only
            loss, _, _ = step(batch, full, alpha=0.0)
            update(loss)
            stats["warmup_loss"].append(loss.item())

        bar = tqdm(range(total_steps), desc="token weighting", disable=not progress)
        for step_index in bar:
            batch = data.select(next(batches))
            real = batch.rationale_lengths
            logits = module.logits(batch.rationale, _length_mask(real, batch.rationale.shape[1]))
            if score_function:
                loss, lp, lm, surrogate, keep = score_function_step(batch, logits)
                update(loss + surrogate)
            else:
                tau = temperature_at(step_index, total_steps, config)
                stats["temperature"].append(tau)
                keep = gumbel_keep_mask(logits, tau, noise_rng, hard=config.hard_mask)
                loss, lp, lm = step(batch, keep, config.alpha)
                update(loss)
            if on_step is not None:
                with torch.no_grad():
                    on_step(step_index, module)
            ratio = (keep.detach() * _length_mask(real, keep.shape[1])).sum() / real.sum()
            for name, value in (("loss", loss), ("answer_loss", lp), ("mask_loss", lm), ("keep_ratio", ratio)):
                stats[name].append(value.item())
            if step_index % 10 == 0 or step_index == total_steps - 1:
                shown = {} if score_function else {"tau": f"{tau:.2f}"}
                bar.set_postfix(loss=f"{loss.item():.3f}", keep=f"{ratio.item():.2f}", **shown)
        elapsed = time.perf_counter() - start

    if config.predictor_mode == "frozen":
        for p, flag in zip(caller_predictor.parameters(), caller_state[0]):
            p.requires_grad_(flag)
        caller_predictor.train(caller_state[1])
    seen = (total_steps + warmup_steps) * config.batch_size
    stats.update(
        steps=total_steps,
        warmup_steps=warmup_steps,
        train_examples=len(usable),
        skipped_examples=sum(1 for e in examples if not (e.rationale_ids and e.answer_ids)),
        train_seconds=elapsed,
        examples_per_second=seen / elapsed if elapsed > 0 else float("nan"),
        final_keep_ratio=float(np.mean(stats["keep_ratio"][-max(1, total_steps // 10) :])),
        config=config.model_dump(),
    )
    module.eval()
    return WeightingFit(module, mask_vector, predictor, stats)


@torch.no_grad()
def predict_token_weights(
    module: TokenWeightingModule, rationales: list[list[int]], batch_size: int = 64, progress: bool = False
) -> list[np.ndarray]:
    """Deterministic weights w_j = sigmoid(f_w(e_j)) for every token of every rationale (no sampling).

    Returns one float32 array of len(rationale) per rationale, each value strictly inside (0, 1).
    Rationales are batched by length so that padding stays small; the order of the output is the input's.
    """
    was_training = module.training
    module.eval()
    device = module.embedding_table.device
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float32) for _ in rationales]
    by_length = sorted((i for i, r in enumerate(rationales) if r), key=lambda i: len(rationales[i]))
    chunks = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    for chunk in tqdm(chunks, desc="token weights", disable=not progress):
        ids, lengths = pad_id_lists([rationales[i] for i in chunk])
        ids, lengths = ids.to(device), lengths.to(device)
        w = module(ids, _length_mask(lengths, ids.shape[1])).float()
        # float32 sigmoid saturates to exactly 0 or 1 for large logits; the artefact promises (0, 1).
        w = w.clamp(1e-6, 1.0 - 1e-6).cpu().numpy()
        for row, i in enumerate(chunk):
            out[i] = w[row, : len(rationales[i])].copy()
    module.train(was_training)
    return out


def train_token_weighting(
    examples: list[WeightingExample],
    embedding: nn.Embedding,
    predictor: nn.Module,
    config: WeightingConfig | None = None,
    answer_cue_ids: list[int] | tuple[int, ...] = (),
    progress: bool = True,
) -> tuple[list[np.ndarray], dict]:
    """Train the weighting module on `examples`, then weight every rationale token of every example.

    embedding: the student's input embedding (copied, frozen). predictor: any HF causal LM or encoder-decoder
    with the student's tokenizer. answer_cue_ids: ids of the cue between rationale and answer (" Therefore, the
    answer is"). Returns (weights, stats): weights[i] has one float in (0, 1) per token of
    examples[i].rationale_ids (empty rationales get an empty array); stats holds the per-step loss,
    answer loss, mask loss and keep ratio curves (and the Gumbel temperature's, for that estimator), timing and the
    resolved config.
    """
    config = config or WeightingConfig()
    fit = fit_weighting_module(examples, embedding, predictor, config, answer_cue_ids, progress)
    start = time.perf_counter()
    weights = predict_token_weights(
        fit.module, [e.rationale_ids for e in examples], config.inference_batch_size, progress
    )
    fit.stats["inference_seconds"] = time.perf_counter() - start
    nonempty = [w for w in weights if len(w)]
    every_weight = np.concatenate(nonempty) if nonempty else np.zeros(0, dtype=np.float32)
    fit.stats["mean_weight"] = float(every_weight.mean()) if every_weight.size else float("nan")
    fit.stats["weight_std"] = float(every_weight.std()) if every_weight.size else float("nan")
    constant = every_weight.size > 1 and fit.stats["weight_std"] < NEARLY_CONSTANT_WEIGHT_STD
    fit.stats["weights_nearly_constant"] = bool(constant)
    if constant:
        log.warning(
            "token weights are nearly one constant (mean %.4f, std %.4f over %d tokens): the weighting module did not "
            "tell rationale tokens apart, so the weighted loss scales every token alike. The keep ratio per step is "
            "in stats.json; bench/weighting_by_student.py checks whether the predictor's answer depends on the "
            "keypoints at all (with Gemma 3 270M it does, and the weights still came out constant).",
            fit.stats["mean_weight"], fit.stats["weight_std"], every_weight.size,
        )
    return weights, fit.stats


def _length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B] lengths -> [B, width] long mask (1 = real token)."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


def _batch_indices(n: int, batch_size: int, rng: torch.Generator):
    """Endless shuffled batches of indices, reshuffled every epoch."""
    while True:
        perm = torch.randperm(n, generator=rng)
        for i in range(0, n, batch_size):
            yield perm[i : i + batch_size]
