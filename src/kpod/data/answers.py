"""Final-answer extraction, gold-answer normalisation and answer comparison.

Every stage that judges a rationale (filtering teacher outputs, scoring the student) goes through
this module, so "what is the answer of this text" is decided in one place.

Two answer types are registered by name: ``number`` (GSM8K, ASDiv, SVAMP) and ``choice``
(CommonsenseQA letters A-E). A new type is one :class:`AnswerType` given to
:func:`register_answer_type`; a new dataset is one entry in :data:`DATASET_ANSWER_TYPES`.

Number extraction (the first rule that gives an answer decides):

1. Run-on text is cut at the first line that starts a new few-shot item (``"\\nQ:"``).
2. ``strict``: the last answer trigger (``The answer is``, ``Answer:``, ``\\boxed{}``, ``####``)
   followed by a readable answer. What follows it is read as a small arithmetic expression
   (``(84 / 2)`` -> 42, ``9 + 9 = 18`` -> 18, ``$1,234.`` -> 1234), evaluated exactly on fractions
   by a tiny parser (never ``eval``); text that does not start with one gives the number after its
   last ``=``, else its first number. ``not 120``, ``either 42 or 43``, ``(5, 7)``, ``(some - 7)``
   name numbers but no single answer: if no trigger gives one, the result is None (no guess).
   A trigger followed by prose without numbers ("our answer is correct") is ignored.
3. ``flexible`` (no readable trigger): the last concluding sentence (``Therefore``, ``So``, ...)
   gives the number after its last ``=``, else its first number after a leading clause such as
   ``after 26 days,``; without one, the last number outside parentheses. The conclusion rule is for
   prose endings (``Therefore, Sarah owns 17 shirts after buying 8 new ones.``): on the GPT-3.5
   SVAMP/ASDiv chains it agrees with the stated answer for 82 % against 77 % / 71 % for "last number".

Numbers: ``1,234`` -> 1234; ``$``, ``%`` and units are ignored; ``-3``; ``2.5``; ``3/4`` -> 0.75 and
mixed numbers ``2 1/2`` -> 2.5 (common in grade-school maths). Number words (``six``) are not read:
the teacher outputs write results in digits (a word-only conclusion: 0.3 % of the GPT-3.5 chains).
Answers are canonical strings (``"51"``, ``"-3"``, ``"2.5"``; repeating decimals: 10 places).

Choices: the letter after the last trigger (``(c)``, ``C.``, ``C)``, ``Answer: B``; it wins over a
differing choice text), else the choice text it starts with; ``either (a) .. or (e)`` and two
letters are no answer. No trigger: the last ``(x)``, else the only choice named in the last
sentence. Letters beyond the number of choices are rejected.

    >>> extract_answer("84 / 2 = 42. The answer is (84 / 2).\\n\\nQ: Tom has 5 ...", "svamp")
    '42'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal

from kpod.data.numbers import Expression, numbers_in, format_number, parse_number

__all__ = [
    "AnswerDetails", "AnswerType", "DATASET_ANSWER_TYPES", "answer_type", "answers_match", "cut_run_on",
    "extract_answer", "extract_answer_details", "format_number", "normalize_gold", "parse_number",
    "register_answer_type",
]  # fmt: skip

CHOICE_LETTERS = "ABCDE"
_ABSENT = object()  # a trigger followed by prose without any number or letter


@dataclass(frozen=True)
class AnswerDetails:
    """Per-item diagnostics of one extraction.

    answer: normalised answer or None. source: "strict" (read after an answer trigger),
    "flexible" (fallback) or None. rule: "trigger", "conclusion", "last_number", "last_letter",
    "choice_text", or why nothing was found: "trigger_without_answer" (a trigger names numbers or
    letters but no single answer), "ambiguous" ("either 11 or 13" at the end), "no_answer".
    trigger_seen: an answer trigger occurs in the text (after the run-on cut).
    looks_truncated: no trigger and the text stops mid-sentence (e.g. it hit a length limit).
    """

    answer: str | None
    source: Literal["strict", "flexible"] | None
    rule: str
    trigger_seen: bool = False
    looks_truncated: bool = False

    @property
    def found(self) -> bool:
        return self.answer is not None

    @property
    def strict_answer(self) -> str | None:
        """The answer only if it came from a trigger (for strict accuracy)."""
        return self.answer if self.source == "strict" else None


# ----------------------------------------------------------------------------- text

_RUN_ON = re.compile(r"\n\s*Q:")
_TRIGGER = re.compile(
    r"answer\s+(?:is|was|would\s+be|will\s+be)\b\s*:?|(?:^|(?<=\bthe )|(?<=\bfinal ))answer\s*[:=]"
    r"|\\boxed\s*\{|####",
    re.IGNORECASE | re.MULTILINE,
)
_LATEX = [  # also markdown bold around text: "**18**", but not a power "2 ** 3"
    (re.compile(r"(?:^|(?<=[\s(:]))\*\*(?=\S)|(?<=\S)\*\*(?=[\s.,;:!?)]|$)", re.MULTILINE), ""),
    (re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\(?:times|cdot)"), "*"),
    (re.compile(r"\\div"), "/"),
    (re.compile(r"\\([$%])"), r"\1"),
    (re.compile(r"\\[,!;: ]"), ""),
    (re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}"), r"\1"),
]
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|vs|etc|approx|e\.g|i\.e)$|\b[A-Z]$")


def cut_run_on(text: str) -> str:
    """Drop everything from the first line that starts a new ``Q:`` item (made-up few-shot runs)."""
    match = _RUN_ON.search(text)
    return text[: match.start()] if match else text


def _prepare(text: str) -> str:
    text = cut_run_on(text).replace("\u2212", "-")  # unicode minus
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    return text


def _trigger_span(text: str, match: re.Match) -> str:
    """The text a trigger points at: its braces for \\boxed{}, else the rest of its sentence."""
    start = match.end()
    if match.group(0).endswith("{"):
        depth, end = 1, start
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        return text[start : end - 1 if depth == 0 else end]
    start += len(text[start:]) - len(text[start:].lstrip())  # "The answer is:\n\n42"
    end = re.compile(r"\.(?!\d)|[!?\n]").search(text, start)  # a period not inside a number
    return text[start : end.start() if end else len(text)]


def _sentences(text: str) -> list[str]:
    """Split at newlines and at ``. ! ?`` + space; ``Mrs. Hilt`` and ``... is:\\n\\n42`` stay whole."""
    pieces, start = [], 0
    for match in re.finditer(r"[.!?](?=\s)|\n", text):
        piece = text[start : match.end()]
        if (match.group(0) == "." and _ABBREVIATION.search(piece[:-1])) or piece.strip().endswith(":"):
            continue
        pieces.append(piece)
        start = match.end()
    pieces.append(text[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


def _looks_truncated(text: str) -> bool:
    tail = text.rstrip()
    return bool(tail) and not re.search(r"[.!?)\]}\"'*`$%\d]$", tail)


def _strict(text: str, read: Callable[[str], object], unreadable_rule: str) -> tuple[AnswerDetails | None, bool]:
    """Answer after the last trigger that gives one, as (details or None, trigger_seen).

    ``read`` maps a trigger's span to an answer string, None (names candidates but no single
    answer) or _ABSENT (names nothing). Spans that are all None end in ``unreadable_rule``.
    """
    triggers = list(_TRIGGER.finditer(text))
    unreadable = False
    for match in reversed(triggers):
        answer = read(_trigger_span(text, match))
        if isinstance(answer, str):
            return AnswerDetails(answer, "strict", "trigger", trigger_seen=True), True
        unreadable |= answer is None
    if unreadable:  # do not guess from the reasoning when the stated answer is unreadable
        return AnswerDetails(None, None, unreadable_rule, trigger_seen=True), True
    return None, bool(triggers)


# ----------------------------------------------------------------------------- numbers

_CONCLUSION = re.compile(
    r"(?:therefore|thus|hence|so|in conclusion|in total|in summary|overall|as a result|altogether|"
    r"finally|either way|this means|that means)\b",
    re.IGNORECASE,
)
_LEADING_CLAUSE = re.compile(
    r"^(?:after|if|when|since|with|by|in|for|because|given|once|at|on)\b[^,]*,\s*", re.IGNORECASE
)


def _sentence_number(sentence: str) -> Fraction | object | None:
    """The result a sentence states: Fraction, None (numbers but no single result) or _ABSENT.

    An expression at its start is evaluated; else the number after its last ``=``; else its first.
    """
    sentence = sentence.lstrip(" \t\n:*=")
    if not numbers_in(sentence):
        return _ABSENT
    corrected = re.match(r"not\s+[-$\d.,]+\s*[,;]?\s*(?:it'?s|it is|but)\s+(?=\S*\d)", sentence, re.IGNORECASE)
    if corrected:  # "not 40, it's 50"
        sentence = sentence[corrected.end() :]
    if re.match(r"not\b|either\b", sentence, re.IGNORECASE) or re.search(r"\beither\b.*\bor\b", sentence):
        return None
    expression = Expression(sentence)
    if expression.tokens:
        value = expression.value()
        if value is not None and re.match(r"\s*(?:,|and\b|or\b)\s*\(?\$?-?\d", sentence[expression.end :]):
            return None  # two results: "(5 + 3) and (9 - 4)", "5, 7"
        return value
    if "=" in sentence:
        after = sentence.rsplit("=", 1)[1]
        expression = Expression(after)
        if expression.tokens:
            return expression.value()
        numbers = numbers_in(after)
        return numbers[0] if numbers else None
    return numbers_in(sentence)[0]


# "the answer is bigger than 10": a bound the reasoning checks, not the answer it states
_COMPARISON = re.compile(r"(?:bigger|greater|larger|smaller|less|more|fewer|higher|lower)\s+than\b|at\s+(?:least|most)\b",
                         re.IGNORECASE)


def _read_number(span: str) -> str | object | None:
    if _COMPARISON.match(span.lstrip(" \t\n:*")):
        return _ABSENT
    value = _sentence_number(span)
    return format_number(value) if isinstance(value, Fraction) else value


def _extract_number(text: str, choices: list[str] | None = None) -> AnswerDetails:
    text = _prepare(text)
    strict, trigger_seen = _strict(text, _read_number, "trigger_without_answer")
    if strict:
        return strict
    truncated = _looks_truncated(text) and not trigger_seen

    def flexible(value: Fraction, rule: str) -> AnswerDetails:
        return AnswerDetails(format_number(value), "flexible", rule, trigger_seen, truncated)

    numbered = [sentence for sentence in _sentences(text) if numbers_in(sentence)]
    if numbered and re.search(r"\beither\b.*\bor\b", numbered[-1], re.IGNORECASE):
        return AnswerDetails(None, None, "ambiguous", trigger_seen, truncated)  # "either 11 or 13 roses"
    conclusions = [sentence for sentence in numbered if _CONCLUSION.match(sentence)]
    if conclusions:
        sentence = _CONCLUSION.sub("", conclusions[-1], count=1).lstrip(" ,:")
        if "=" not in sentence:
            sentence = _LEADING_CLAUSE.sub("", sentence, count=1)
        value = _sentence_number(sentence)
        if isinstance(value, Fraction):
            return flexible(value, "conclusion")
    # "... a total of 37 carrot sticks (22+15)." : a closing aside is not the result
    numbers = numbers_in(re.sub(r"\([^()]*\)", " ", text)) or numbers_in(text)
    if numbers:
        return flexible(numbers[-1], "last_number")
    return AnswerDetails(None, None, "no_answer", trigger_seen, truncated)


# ----------------------------------------------------------------------------- choices

_LETTER_FORMS = [
    re.compile(r"\(([A-Ea-e])\)"),  # (c) / (C)
    re.compile(r"([a-e])\)"),  # c)
    re.compile(r"(?:option|choice)\s+\(?([A-Ea-e])\b", re.IGNORECASE),
    re.compile(r"\[([A-Ea-e])\]"),  # [c] / [C]
    re.compile(r"([A-E])(?:[.):,;]|$)"),  # C. / C) / C   (upper case only: "a" is an article)
    re.compile(r"([a-e])(?=[,;:]|$)"),  # c. / c, because  (a lower-case letter alone: "a bench" is not "a")
]


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _letter(letter: str, choices: list[str] | None) -> str | None:
    """Upper-case letter if it names an existing choice (A-E, or fewer when choices are known)."""
    index = CHOICE_LETTERS.find(letter.upper()) if len(letter) == 1 else -1
    limit = len(choices) if choices else len(CHOICE_LETTERS)
    return CHOICE_LETTERS[index] if 0 <= index < limit else None


def _choice_spelled_out(text: str, choices: list[str] | None, whole: bool) -> str | None:
    """Letter of the choice the text is (``whole``) or starts with (the longest such choice)."""
    said = _plain(text)
    best, best_length = None, 0
    for index, choice in enumerate(choices or []):
        wanted = _plain(choice)
        fits = said == wanted if whole else (said + " ").startswith(wanted + " ")
        if wanted and fits and len(wanted) > best_length:
            best, best_length = CHOICE_LETTERS[index], len(wanted)
    return best


def choices_named(text: str, choices: list[str] | None, plurals: bool = False) -> list[str]:
    """Letters of the choices whose words stand whole in `text` (case and punctuation aside); with `plurals`, also
    followed by "s" or "es" ("fast food restaurants" names "fast food restaurant")."""
    said = f" {_plain(text)} "
    endings = ("", "s", "es") if plurals else ("",)
    return [CHOICE_LETTERS[index] for index, choice in enumerate(choices or [])
            if (plain := _plain(choice)) and any(f" {plain}{end} " in said for end in endings)]


def reasoning_sentences(text: str) -> list[str]:
    """The sentences of an answer's reasoning: those before the sentence with its first answer trigger ("Therefore,
    the answer is E." is left out whole); every sentence when no trigger is found."""
    text = _prepare(text)
    match = _TRIGGER.search(text)
    if not match:
        return _sentences(text)
    sentences = _sentences(text[: match.start()])
    return sentences[:-1] if sentences and not re.search(r"[.!?]$", sentences[-1]) else sentences


def _read_letter(span: str, choices: list[str] | None) -> str | object | None:
    span = span.lstrip(" \t\n:*")
    if re.search(r"\beither\b", span, re.IGNORECASE) or len(set(re.findall(r"\(([a-eA-E])\)", span))) > 1:
        return None  # "either (a) aquarium or (e) pond", "(b) cough and (c) wheeze"
    for form in _LETTER_FORMS:
        if match := form.match(span):
            return _letter(match.group(1), choices)
    return _choice_spelled_out(span, choices, whole=False) or _ABSENT


def _extract_choice(text: str, choices: list[str] | None = None) -> AnswerDetails:
    text = _prepare(text)
    strict, trigger_seen = _strict(text, lambda span: _read_letter(span, choices), "trigger_without_answer")
    if strict:
        return strict
    truncated = _looks_truncated(text) and not trigger_seen
    letters = re.findall(r"\(([A-Ea-e])\)", text)
    if letters and _letter(letters[-1], choices):
        return AnswerDetails(_letter(letters[-1], choices), "flexible", "last_letter", trigger_seen, truncated)
    sentences = _sentences(text)
    named = choices_named(sentences[-1], choices) if sentences else []
    if len(named) == 1:  # "... only aspirin can get rid of a headache."
        return AnswerDetails(named[0], "flexible", "choice_text", trigger_seen, truncated)
    return AnswerDetails(None, None, "no_answer", trigger_seen, truncated)


# ----------------------------------------------------------------------------- gold and comparison


def _number_gold(answer: object, choices: list[str] | None = None) -> str | None:
    """``"#### 1,234"`` -> "1234", ``"9 (apples)"`` -> "9", ``"6th"`` / ``"February 3rd"`` -> "6" / "3",
    ``51.0`` -> "51"; None unless exactly one number is left (``"3:2"``, ``"5; 7"``, ``"Yes"``)."""
    if isinstance(answer, bool) or answer is None:
        return None
    if isinstance(answer, (int, float)):
        return format_number(Fraction(repr(answer))) if math.isfinite(answer) else None
    text = str(answer).rsplit("####", 1)[-1].replace("\u2212", "-")  # a unicode minus, as model text gets too
    numbers = numbers_in(re.sub(r"\([^()]*\)", " ", text))
    return format_number(numbers[0]) if len(numbers) == 1 else None


def _choice_gold(answer: object, choices: list[str] | None = None) -> str | None:
    """``"A. ignore"`` / ``"A"`` / ``"(a)"`` -> "A"; with ``choices``, a choice text -> its letter."""
    text = str(answer).strip()
    match = re.fullmatch(r"\(?([A-Ea-e])\)?(?:[.):]\s*.*)?", text, re.DOTALL)
    if match and not (choices and _choice_spelled_out(text, choices, whole=True)):
        return _letter(match.group(1), choices)
    return _choice_spelled_out(text, choices, whole=True)


def _same_number(prediction: str, gold: str) -> bool:
    """Equal values. Canonical answers keep 10 decimal places, so an absolute 1e-6 only absorbs the rounding of a
    repeating decimal (0.3333333333 against 1/3); a relative tolerance would let 10001 pass for 10000."""
    predicted, wanted = parse_number(prediction), parse_number(gold)
    if predicted is None or wanted is None:
        return False
    return abs(predicted - wanted) <= Fraction(1, 1_000_000)


def _same_letter(prediction: str, gold: str) -> bool:
    return prediction.strip().upper() == gold.strip().upper()


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class AnswerType:
    """One kind of answer: how to read it from a text, normalise a gold label and compare them.

    extract(text, choices) -> AnswerDetails; normalize_gold(answer, choices) -> str | None;
    same(prediction, gold) -> bool (both already normalised, never None).
    """

    name: str
    extract: Callable[[str, list[str] | None], AnswerDetails]
    normalize_gold: Callable[[object, list[str] | None], str | None]
    same: Callable[[str, str], bool]


_ANSWER_TYPES: dict[str, AnswerType] = {}
DATASET_ANSWER_TYPES: dict[str, str] = {"gsm8k": "number", "asdiv": "number", "svamp": "number", "csqa": "choice"}


def register_answer_type(kind: AnswerType) -> AnswerType:
    """Make an answer type usable by name; its name also works as a dataset name (users' data)."""
    _ANSWER_TYPES[kind.name] = kind
    DATASET_ANSWER_TYPES.setdefault(kind.name, kind.name)
    return kind


register_answer_type(AnswerType("number", _extract_number, _number_gold, _same_number))
register_answer_type(AnswerType("choice", _extract_choice, _choice_gold, _same_letter))


def _kind(dataset: str) -> AnswerType:
    try:
        return _ANSWER_TYPES[DATASET_ANSWER_TYPES[dataset]]
    except KeyError:
        known = ", ".join(sorted(DATASET_ANSWER_TYPES))
        raise ValueError(f"unknown dataset {dataset!r}; known datasets and answer types: {known}") from None


# ----------------------------------------------------------------------------- public API


def answer_type(dataset: str) -> str:
    """Name of the answer type of a dataset: ``"number"`` or ``"choice"`` (or a registered one)."""
    return _kind(dataset).name


def extract_answer_details(text: str, dataset: str, choices: list[str] | None = None) -> AnswerDetails:
    """Answer of a model output plus how it was found (strict / flexible, rule, truncation)."""
    return _kind(dataset).extract(text, choices)


def extract_answer(text: str, dataset: str, choices: list[str] | None = None) -> str | None:
    """Normalised final answer of a model output (``"51"``, ``"2.5"``, ``"C"``) or None."""
    return extract_answer_details(text, dataset, choices).answer


def normalize_gold(answer: object, dataset: str, choices: list[str] | None = None) -> str | None:
    """Gold label in the same canonical form as :func:`extract_answer` (None if unusable)."""
    return _kind(dataset).normalize_gold(answer, choices)


def answers_match(prediction: str | None, gold: str | None, dataset: str, choices: list[str] | None = None) -> bool:
    """True if both are present and equal: numbers within 1e-6, choices by letter. With `choices`, two letters whose
    options read the same also match: a few CommonsenseQA questions list the gold text twice, and the release gives
    the gold as text, so either letter is the gold."""
    if prediction is None or gold is None:
        return False
    kind = _kind(dataset)
    if kind.same(prediction, gold):
        return True
    return bool(choices) and kind.name == "choice" and _same_choice_text(prediction, gold, choices)


def _same_choice_text(prediction: str, gold: str, choices: list[str]) -> bool:
    letters = [_letter(x.strip(), choices) for x in (prediction, gold)]
    if None in letters:
        return False
    first, second = (" ".join(choices[CHOICE_LETTERS.index(x)].lower().split()) for x in letters)
    return first == second
