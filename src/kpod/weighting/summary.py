"""What the learned token weights look like: mean weight per token class and the top / bottom tokens.

The paper (Fig. 2) reports that digits and operators get the highest weights, answer-cue words ("twice",
"total") high ones, and filler words low ones; `summarize_weights` measures exactly that on an artefact:

    from kpod.weighting import load_weights_jsonl, summarize_weights
    print(json.dumps(summarize_weights(load_weights_jsonl("token_weights.jsonl")), indent=2))
"""

from __future__ import annotations

import string
from collections import defaultdict
from typing import Iterable, Mapping

from kpod.weighting.artefact import WeightedRationale, as_weighted_rationale, readable_token

TOKEN_CLASSES = ("digit", "operator", "cue_word", "other_word", "punctuation", "whitespace", "other")

# Words that tell how numbers combine in a word problem.
CUE_WORDS = frozenset(
    """total twice each half per left more less times remaining remain altogether together sum difference
    product average fewer rest double triple thrice quarter every combined spent spend earn earned
    gave give lost increase decrease percent""".split()
)
OPERATOR_CHARS = frozenset("+-*/=×÷%^<>−")
MULTIPLY_WORDS = frozenset({"x"})  # "3 x 4": in math rationales a lone x is the times sign


def classify_token(text: str) -> str:
    """Class of one token's text (leading/trailing spaces and "Ġ"/"▁" markers ignored), one of TOKEN_CLASSES.

    digit: only digits with optional "." or "," inside ("3", "12", "1.5", "2,000"); operator: only
    operator characters, or a lone "x"; cue_word: one of CUE_WORDS (any case); other_word: letters only;
    punctuation: only punctuation or symbols such as "$"; whitespace: nothing visible; other: mixtures.
    """
    s = readable_token(text).strip()
    if not s:
        return "whitespace"
    if any(c.isdigit() for c in s) and all(c.isdigit() or c in ".," for c in s):
        return "digit"
    if all(c in OPERATOR_CHARS for c in s) or s.lower() in MULTIPLY_WORDS:
        return "operator"
    if s.lower() in CUE_WORDS:
        return "cue_word"
    if s.isalpha():
        return "other_word"
    if all(c in string.punctuation or not c.isalnum() for c in s):
        return "punctuation"
    return "other"


def summarize_weights(
    rows: Iterable[WeightedRationale | Mapping], top_k: int = 20, min_count: int = 5
) -> dict:
    """Mean weight per token class, plus the top_k highest and lowest tokens by mean weight.

    Tokens are grouped by their stripped, lower-cased text; only texts seen at least `min_count` times
    rank among top and bottom. Returns a JSON-able dict:
    {"num_rationales", "num_tokens", "mean_weight", "weight_std", "classes": {class: {"count", "mean_weight"}},
     "top_tokens": [{"token", "class", "count", "mean_weight"}], "bottom_tokens": [...]}
    (a class with no token has count 0 and mean_weight None).
    """
    class_sum: dict[str, float] = defaultdict(float)
    class_count: dict[str, int] = defaultdict(int)
    token_sum: dict[str, float] = defaultdict(float)
    token_count: dict[str, int] = defaultdict(int)
    square_sum = 0.0  # for the spread: a near-zero std means one weight for every token
    num_rationales = 0
    for raw in rows:
        row = as_weighted_rationale(raw)
        num_rationales += 1
        for text, weight in zip(row.tokens, row.weights):
            cls = classify_token(text)
            class_sum[cls] += weight
            class_count[cls] += 1
            square_sum += weight * weight
            key = readable_token(text).strip().lower()
            token_sum[key] += weight
            token_count[key] += 1

    total = sum(class_count.values())
    mean = sum(class_sum.values()) / total if total else None
    frequent = [
        {"token": t, "class": classify_token(t), "count": n, "mean_weight": token_sum[t] / n}
        for t, n in token_count.items()
        if n >= min_count
    ]
    top = sorted(frequent, key=lambda r: (-r["mean_weight"], r["token"]))  # ties broken by the text
    bottom = sorted(frequent, key=lambda r: (r["mean_weight"], r["token"]))
    return {
        "num_rationales": num_rationales,
        "num_tokens": total,
        "mean_weight": mean,
        "weight_std": max(square_sum / total - mean * mean, 0.0) ** 0.5 if total else None,
        "classes": {
            c: {"count": class_count[c], "mean_weight": class_sum[c] / class_count[c] if class_count[c] else None}
            for c in TOKEN_CLASSES
        },
        "top_tokens": top[:top_k],
        "bottom_tokens": bottom[:top_k],
    }
