"""Numbers in teacher and student text: reading them (``1,234``, ``-3``, ``2.5``, ``3/4``, ``2 1/2``), writing
them canonically, and evaluating the small arithmetic expression that may follow an answer trigger
(``(84 / 2)`` -> 42) exactly on fractions, never with ``eval``. Used by `kpod.data.answers`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

MAX_DECIMALS = 10  # canonical strings round non-terminating decimals to this many places

_NUMBER = (
    r"(?P<mixed>\d+ \d+/\d+(?![\d/]))"  # 2 1/2 (checked to be proper in _number_values)
    r"|(?P<fraction>\d+/\d+(?![\d/]))"
    r"|(?P<decimal>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|\d+(?:\.\d+)?)"
)
# a minus is a sign only when not glued to a word or number on its left: "-3", "-$5", not "30-27"
_NUMBER_IN_TEXT = re.compile(r"(?:(?<![\w)\]}])(?P<neg>-)\s?\$?\s?)?(?:" + _NUMBER + ")")
def _number_values(match: re.Match) -> list[Fraction]:
    """Values of one number match; an improper "mixed number" (``5 12/4``) is two numbers."""
    if match.group("mixed"):
        whole, fraction = match.group("mixed").split(" ")
        numerator, denominator = (int(part) for part in fraction.split("/"))
        if 0 < numerator < denominator:
            return [int(whole) + Fraction(numerator, denominator)]
        return [Fraction(int(whole))] + ([Fraction(numerator, denominator)] if denominator else [])
    if match.group("fraction"):
        numerator, denominator = (int(part) for part in match.group("fraction").split("/"))
        return [Fraction(numerator, denominator)] if denominator else [Fraction(numerator)]
    return [Fraction(match.group("decimal").replace(",", ""))]


def numbers_in(text: str) -> list[Fraction]:
    """All numbers of a text in order, signs applied."""
    values = []
    for match in _NUMBER_IN_TEXT.finditer(text):
        found = _number_values(match)
        if match.group("neg"):
            found[0] = -found[0]
        values.extend(found)
    return values


def format_number(value: Fraction) -> str:
    """Canonical string: ``51``, ``-3``, ``2.5``; repeating decimals rounded to 10 places."""
    if value.denominator == 1:
        return str(value.numerator)
    rounded = round(Decimal(value.numerator) / Decimal(value.denominator), MAX_DECIMALS)
    text = format(rounded, "f").rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def parse_number(text: str) -> Fraction | None:
    """Value of a canonical number string (``"2.5"``, ``"-3"``, ``"3/4"``), or None."""
    try:
        return Fraction(text.strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


class Expression:
    """Reads the arithmetic expression at the start of a string (``(84 / 2)``, ``9 + 9 = 18``).

    Recursive descent over numbers and ``+ - * / x × ÷ ( ) =`` on exact fractions; ``$`` and ``%``
    are skipped. Tokenising stops at anything else, so ``42 apples`` reads 42 and ``(9 + x)``
    (``x`` not after a number) is broken. After ``=`` the right-hand side wins. ``value()`` is None
    for a broken expression; ``end`` is the text index just past what the parser consumed.
    """

    _TOKEN = re.compile(r"\s*(?:(?P<number>" + _NUMBER + r")|(?P<op>[-+*/×÷()=]|x(?![A-Za-z]))|[$%])")

    def __init__(self, text: str):
        self.tokens: list[Fraction | str] = []
        self._ends: list[int] = []  # text index after each token
        self.position = 0
        offset = 0
        while match := self._TOKEN.match(text, offset):
            offset = match.end()
            if match.group("number"):
                values = _number_values(match)
            elif match.group("op"):
                after_operand = self.tokens and (isinstance(self.tokens[-1], Fraction) or self.tokens[-1] == ")")
                if match.group("op") == "x" and not after_operand:
                    break  # a variable, not a times sign
                values = [{"×": "*", "x": "*", "÷": "/"}.get(match.group("op"), match.group("op"))]
            else:
                continue
            self.tokens.extend(values)
            self._ends.extend([offset] * len(values))

    @property
    def end(self) -> int:
        consumed = min(self.position, len(self._ends))
        return self._ends[consumed - 1] if consumed else 0

    def value(self) -> Fraction | None:
        try:
            result = self._sum()
            while self._peek() == "=":
                self.position += 1
                result = self._sum()
        except (ValueError, ZeroDivisionError):
            return None
        return result

    def _peek(self) -> Fraction | str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _sum(self) -> Fraction:
        result = self._product()
        while (op := self._peek()) in ("+", "-"):
            self.position += 1
            result = result + self._product() if op == "+" else result - self._product()
        return result

    def _product(self) -> Fraction:
        result = self._factor()
        while (op := self._peek()) in ("*", "/"):
            self.position += 1
            result = result * self._factor() if op == "*" else result / self._factor()
        return result

    def _factor(self) -> Fraction:
        token = self._peek()
        self.position += 1
        if isinstance(token, Fraction):
            return token
        if token in ("-", "+"):
            return -self._factor() if token == "-" else self._factor()
        if token == "(":
            value = self._sum()
            if self._peek() != ")":
                raise ValueError("unclosed parenthesis")
            self.position += 1
            return value
        raise ValueError(f"unexpected token {token!r}")
