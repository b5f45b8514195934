"""Batched greedy generation that stops each sequence as soon as its answer is complete.

For decoder-only models this is our own short KV-cache loop: prompts are sorted by length and left-padded, and a
sequence that has finished (end token, a completed "the answer is ...." sentence, or a run-on "\\nQ:") leaves the
batch at once, so no compute is spent decoding padding. Encoder-decoder models use `model.generate`.
Greedy by default; `temperature > 0` samples (with `top_p` nucleus filtering and a seeded generator) instead,
which the teacher's multi-rationale runs use.

    >>> texts, stats = generate(model, tokenizer, prompts, batch_size=32, max_new_tokens=200)
    >>> stats["useful_tokens"] / stats["computed_tokens"]      # 1.0 for the decoder-only loop
    >>> texts, stats = generate(model, tokenizer, prompts, temperature=0.7, top_p=0.95, seed=1)
    >>> texts, stats = generate(model, tokenizer, prompts, contrast_prompts=others, contrast_strength=0.5)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutputWithPast

from kpod.models import is_seq2seq

# "...the answer is 12." followed by more text: the answer sentence is complete. A decimal point is never followed by
# whitespace, so "3.5" does not stop early. Only an answer sentence counts: the target's "Therefore, the answer is",
# or "answer is" followed at once by a number or a choice ("$12", "-3", "(B)", "B."), not prose that happens to say
# "answer is" ("this answer is wrong. ", "the answer is to add 25 to 20. ").
ANSWER_DONE = re.compile(
    r"(?:therefore, the answer is|answer is:?\s*(?:\*\*)?\s*(?=[-\u2212$(]?\d|\(?(?-i:[A-E])\b))[^\n]*?\.\s",
    re.IGNORECASE,
)
RUN_ON = re.compile(r"\n\s*Q:")
_TAIL_TOKENS = 24  # enough of the tail to see a finished answer sentence
# transformers 5.x renamed a model's KV-cache argument and output from `past_key_values` to `cache` (the old name
# warns, then goes in 5.40); use whichever this version has.
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class StopRule:
    stop_token_ids: set[int]
    stop_at_answer: bool = True

    def finished(self, text_tail: str) -> bool:
        return bool(RUN_ON.search(text_tail) or (self.stop_at_answer and ANSWER_DONE.search(text_tail)))


def stop_token_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for name in ("<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return {i for i in ids if i is not None}


def trim_output(text: str) -> str:
    """Drop a run-on made-up next question and what follows an answer sentence that generation stopped after."""
    text = RUN_ON.split(text)[0]
    m = ANSWER_DONE.search(text)
    return text[: m.end()].rstrip() if m else text.rstrip()


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def token_sampler(temperature: float, top_p: float = 1.0, seed: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Next-token picker for logits [B, V] -> ids [B]: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return _argmax
    generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
        if top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p (always the top token)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)

    return pick


class _CausalContext:
    """A left-padded batch of prompts and its KV cache, advanced one token at a time; `logits` [B, V] predict the
    next token of each row."""

    def __init__(self, model, pad_id: int, batch_ids: list[list[int]], stats: dict):
        self.model, device = model, next(model.parameters()).device
        width = max(len(x) for x in batch_ids)
        ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for r, x in enumerate(batch_ids):
            ids[r, width - len(x):] = torch.tensor(x)
            attn[r, width - len(x):] = 1
        self.attn = attn.to(device)
        pos = (self.attn.cumsum(-1) - 1).clamp_min(0)
        out = model(input_ids=ids.to(device), attention_mask=self.attn, position_ids=pos, use_cache=True,
                    logits_to_keep=1)
        self.cache, self.logits, self.last_pos = getattr(out, _CACHE), out.logits[:, -1], pos[:, -1]
        stats["prefill_tokens"] += int(attn.sum())

    def keep_rows(self, idx: torch.Tensor) -> None:
        self.cache.batch_select_indices(idx)
        self.attn, self.last_pos = self.attn[idx], self.last_pos[idx]

    def advance(self, tokens: torch.Tensor) -> None:
        self.attn = torch.cat([self.attn, self.attn.new_ones((len(tokens), 1))], dim=1)
        self.last_pos = self.last_pos + 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=self.last_pos[:, None],
                         use_cache=True, **{_CACHE: self.cache})
        self.cache, self.logits = getattr(out, _CACHE), out.logits[:, -1]


def contrastive_scores(logits: torch.Tensor, contrast_logits: torch.Tensor, strength: float) -> torch.Tensor:
    """SCOTT's contrastive decoding (Wang et al. 2023): log p(t | prompt) - strength * log p(t | contrast prompt),
    favouring the tokens that the prompt's difference (e.g. the gold answer against a perturbed one) makes likelier."""
    return torch.log_softmax(logits.float(), -1) - strength * torch.log_softmax(contrast_logits.float(), -1)


@torch.no_grad()
def _greedy_causal(model, tokenizer, batch_ids: list[list[int]], max_new_tokens: int, rule: StopRule, stats: dict,
                   pick: Callable[[torch.Tensor], torch.Tensor] = _argmax, contrast_ids: list[list[int]] | None = None,
                   contrast_strength: float = 0.0):
    """Tokens generated for each prompt. With `contrast_ids` (one contrast prompt per prompt), each token is picked
    from `contrastive_scores`, and both contexts are fed the same picked tokens."""
    contexts = [_CausalContext(model, tokenizer.pad_token_id, batch_ids, stats)]
    if contrast_ids is not None:
        contexts.append(_CausalContext(model, tokenizer.pad_token_id, contrast_ids, stats))

    def next_tokens() -> torch.Tensor:
        if len(contexts) == 1:
            return pick(contexts[0].logits)
        return pick(contrastive_scores(contexts[0].logits, contexts[1].logits, contrast_strength))

    device = contexts[0].attn.device
    nxt = next_tokens()
    rows = list(range(len(batch_ids)))  # original row of each active sequence
    generated: list[list[int]] = [[] for _ in batch_ids]
    for _ in range(max_new_tokens):
        stats["computed_tokens"] += len(rows) * len(contexts)
        keep = []
        for k, r in enumerate(rows):
            tok = int(nxt[k])
            generated[r].append(tok)
            done = tok in rule.stop_token_ids or len(generated[r]) >= max_new_tokens
            if not done:
                done = rule.finished(tokenizer.decode(generated[r][-_TAIL_TOKENS:], skip_special_tokens=True))
            if not done:
                keep.append(k)
        if not keep:
            break
        if len(keep) < len(rows):  # finished sequences leave the batch
            idx = torch.tensor(keep, device=device)
            for context in contexts:
                context.keep_rows(idx)
            nxt = nxt[idx]
            rows = [rows[k] for k in keep]
        for context in contexts:
            context.advance(nxt)
        nxt = next_tokens()
    return generated


@torch.no_grad()
def _greedy_seq2seq(model, tokenizer, batch_ids, max_new_tokens, rule: StopRule, stats: dict,
                    sampling: dict | None = None):
    device = next(model.parameters()).device
    enc = tokenizer.pad({"input_ids": batch_ids}, return_tensors="pt").to(device)
    out = model.generate(**enc, **(sampling or {"do_sample": False}), max_new_tokens=max_new_tokens,
                         eos_token_id=sorted(rule.stop_token_ids), pad_token_id=tokenizer.pad_token_id)
    stats["prefill_tokens"] += int(enc["attention_mask"].sum())
    stats["computed_tokens"] += out.shape[0] * (out.shape[1] - 1)
    generated = []
    for row in out[:, 1:].tolist():  # drop the decoder start token
        cut = next((j + 1 for j, t in enumerate(row) if t in rule.stop_token_ids), len(row))
        generated.append(row[:cut])
    return generated


def generate(model, tokenizer, prompts: list[str], *, batch_size: int = 32, max_new_tokens: int = 200,
             stop_at_answer: bool = True, progress: bool = True, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, return_token_counts: bool = False, contrast_prompts: list[str] | None = None,
             contrast_strength: float = 0.5) -> tuple[list[str], dict]:
    """Outputs for `prompts` (in input order) and throughput statistics; greedy unless `temperature > 0`.

    With `contrast_prompts` (one per prompt; decoder-only models), tokens are picked by contrastive decoding
    (`contrastive_scores`, weight `contrast_strength`) instead of from the prompt's distribution alone.
    With `return_token_counts`, `stats["prompt_tokens"]` and `stats["new_tokens"]` list the prompt and generated
    token counts of each prompt (in input order)."""
    model.eval()
    rule = StopRule(stop_token_ids(tokenizer), stop_at_answer)
    encoded = [tokenizer(p).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    contrast = None
    if contrast_prompts is not None:
        if len(contrast_prompts) != len(prompts):
            raise ValueError(f"{len(contrast_prompts)} contrast prompts for {len(prompts)} prompts")
        if is_seq2seq(model):
            raise ValueError("contrastive decoding is implemented for decoder-only (causal) models only")
        contrast = [tokenizer(p).input_ids for p in contrast_prompts]
    if is_seq2seq(model):
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else None
        if sampling and seed is not None:
            torch.manual_seed(seed)
        decode = partial(_greedy_seq2seq, sampling=sampling)
    else:
        decode = partial(_greedy_causal, pick=token_sampler(temperature, top_p, seed))
    stats = {"prefill_tokens": 0, "computed_tokens": 0, "useful_tokens": 0}
    new_tokens = [0] * len(prompts)
    outputs: list[str] = [""] * len(prompts)
    t0 = time.time()
    bar = tqdm(total=len(prompts), desc="generating", disable=not progress, mininterval=2)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        extra = {} if contrast is None else {"contrast_ids": [contrast[i] for i in idx],
                                             "contrast_strength": contrast_strength}
        gen = decode(model, tokenizer, [encoded[i] for i in idx], max_new_tokens, rule, stats, **extra)
        for i, toks in zip(idx, gen):
            stats["useful_tokens"] += len(toks)
            new_tokens[i] = len(toks)
            outputs[i] = trim_output(tokenizer.decode(toks, skip_special_tokens=True))
        bar.update(len(idx))
    bar.close()
    wall = time.time() - t0
    stats.update(
        wall_s=round(wall, 2),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        useful_tokens_per_s=round(stats["useful_tokens"] / wall, 1) if wall else None,
        useful_over_computed=round(stats["useful_tokens"] / max(1, stats["computed_tokens"]), 3),
    )
    if return_token_counts:
        stats.update(prompt_tokens=[len(x) for x in encoded], new_tokens=new_tokens)
    return outputs, stats
