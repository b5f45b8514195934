"""Split a rationale into reasoning steps and map each step to its tokens.

The paper splits rationales on "." (Sec. 3.4). A period ends a step only when it is followed by whitespace or the
end of the text, so decimals ("3.5", "$1.25") never split; neither do titles and Latin abbreviations ("Mr.", "e.g."),
list markers ("1. First ...") nor an initial within a line ("J. Smith"). A unit or month ("48 min.", "5 ft.", "Dec.")
ends a step only before a capital letter ("48 min. Then ..." does, "5 ft. tall" does not). Splitters are registered by name, so a user can add one:

    >>> split_steps("He has 3.5 kg. Mr. Smith buys 2. So 5.5 kg.")
    [(0, 14), (14, 33), (33, 43)]          # character spans; whitespace belongs to the following step

`step_token_spans` turns character spans into token spans with the tokenizer's offset mapping, so it works for any
fast tokenizer (byte-level BPE as in SmolLM2/LLaMA, or SentencePiece-style as in T5).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

# Never a sentence end: a title or a Latin abbreviation reads on ("Mr. Smith", "e.g. Tom").
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "e.g", "i.e", "u.s"}
# A sentence end only when a capital letter follows: units, months and the like end sentences in maths rationales
# ("... takes 48 min. Then ...") but also read on ("5 ft. tall", "Dec. 5").
ABBREVIATIONS_BEFORE_LOWER = {
    "etc", "a.m", "p.m", "no", "approx", "inc", "ltd", "co", "ft", "sq", "cu", "in", "yd", "yds", "mi", "oz", "lb",
    "lbs", "gal", "qt", "pt", "tsp", "tbsp", "min", "hr", "hrs", "sec", "wk", "wks", "mo", "mos", "yr", "yrs", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "fig", "eq",
}
_PERIOD_END = re.compile(r"\.(?=\s|$)")
_WORD_BEFORE = re.compile(r"([A-Za-z.]+)$")
_LIST_MARKER = re.compile(r"(?:^|\n)\s*\d{1,2}$")
_CAPITAL_NEXT = re.compile(r"\s+[A-Z]")
_LINE_BREAK_NEXT = re.compile(r"[ \t]*\n")

Splitter = Callable[[str], list[tuple[int, int]]]
SPLITTERS: dict[str, Splitter] = {}


def register_splitter(name: str):
    def deco(fn: Splitter) -> Splitter:
        SPLITTERS[name] = fn
        return fn

    return deco


def _is_boundary(text: str, dot: int) -> bool:
    before = text[:dot]
    word = _WORD_BEFORE.search(before)
    abbreviation = word.group(1).lower().strip(".") if word else ""
    if abbreviation in ABBREVIATIONS:
        return False
    if abbreviation in ABBREVIATIONS_BEFORE_LOWER:
        return bool(_CAPITAL_NEXT.match(text, dot + 1))
    if word and len(word.group(1)) == 1 and word.group(1).isupper():  # an initial, as in "J. Smith", unless the
        return bool(_LINE_BREAK_NEXT.match(text, dot + 1))          # line ends there ("... is X.\nThen")
    if _LIST_MARKER.search(before):  # "1." at the start of a line is an enumeration, not a sentence
        return False
    return True


def _spans_from_ends(text: str, ends: list[int]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for end in ends:
        if text[start:end].strip():
            spans.append((start, end))
            start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    elif spans:  # trailing whitespace joins the last step
        spans[-1] = (spans[-1][0], len(text))
    return spans


@register_splitter("period")
def split_on_periods(text: str) -> list[tuple[int, int]]:
    """The paper's rule: a step ends at a sentence-final ".". Returns character spans covering the text."""
    ends = [m.end() for m in _PERIOD_END.finditer(text) if _is_boundary(text, m.start())]
    return _spans_from_ends(text, ends)


@register_splitter("period_or_newline")
def split_on_periods_or_newlines(text: str) -> list[tuple[int, int]]:
    """Like "period", and a line break also ends a step (for rationales written one step per line)."""
    ends = {m.end() for m in _PERIOD_END.finditer(text) if _is_boundary(text, m.start())}
    ends |= {m.start() for m in re.finditer(r"\n", text) if m.start() > 0}
    return _spans_from_ends(text, sorted(ends))


def split_steps(text: str, splitter: str = "period") -> list[tuple[int, int]]:
    if splitter not in SPLITTERS:
        raise ValueError(f"unknown step splitter {splitter!r}; known: {', '.join(SPLITTERS)}")
    return SPLITTERS[splitter](text)


def step_texts(text: str, splitter: str = "period") -> list[str]:
    return [text[s:e] for s, e in split_steps(text, splitter)]


def step_token_spans(
    offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]], text: str
) -> list[tuple[int, int]]:
    """Token spans [start, end) of each step, from a fast tokenizer's offset mapping over `text`.

    A token belongs to the step that contains its first non-space character (SentencePiece tokens such as "▁Dan"
    start on the space before a word, byte-level BPE tokens such as " Dan" too); a token of spaces alone just before
    the rationale (" " before "15" in SmolLM2) opens the first step, as spaces open the others. Tokens with an empty offset
    (special tokens) are skipped. A step that received no token (possible only for a tokenizer that merges across a boundary) gets an
    empty span at the position of the next step, so step k always exists and spans stay ordered.
    """
    spans: list[list[int]] = [[-1, -1] for _ in char_spans]
    k = 0
    for j, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        if e == char_spans[0][0] and text[s:e].isspace():  # a space token just before the rationale opens its
            s = e                                            # first step, as spaces open the following steps
        while s < e - 1 and text[s].isspace():
            s += 1
        while k + 1 < len(char_spans) and s >= char_spans[k + 1][0]:
            k += 1
        if s < char_spans[0][0] or s >= char_spans[-1][1]:
            continue
        if spans[k][0] < 0:
            spans[k][0] = j
        spans[k][1] = j + 1
    out: list[tuple[int, int]] = []
    nxt = max((b for a, b in spans if a >= 0), default=0)  # where an empty last step sits
    for a, b in reversed(spans):
        if a < 0:
            a = b = nxt
        out.append((a, b))
        nxt = a
    return out[::-1]
