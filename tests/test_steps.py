"""Step splitting on "." (the paper's rule) and step -> token spans for both tokenizer families."""

from __future__ import annotations

import pytest

from kpod.data.rationales import import_rationales
from kpod.data.steps import split_steps, step_texts, step_token_spans


@pytest.mark.parametrize(
    "text, steps",
    [
        ("He has 3.5 kg. She has 2. So 5.5 kg.", ["He has 3.5 kg.", " She has 2.", " So 5.5 kg."]),
        ("It costs $1.25. Two cost $2.50.", ["It costs $1.25.", " Two cost $2.50."]),
        ("Mr. Smith has 4. Dr. Lee has e.g. 3 apples.", ["Mr. Smith has 4.", " Dr. Lee has e.g. 3 apples."]),
        ("1. First add.\n2. Then divide.", ["1. First add.", "\n2. Then divide."]),
        ("No period at the end", ["No period at the end"]),
        ("Ends with space.  ", ["Ends with space.  "]),
        ("J. K. Rowling wrote 7 books. Done.", ["J. K. Rowling wrote 7 books.", " Done."]),
        ("Total is 1,200.50 dollars.\nThus 3.", ["Total is 1,200.50 dollars.", "\nThus 3."]),
        # a unit ends a sentence before a capital letter, not before a lower-case word or a number
        ("It takes 48 min. Then 10 sq ft. Total 58.", ["It takes 48 min.", " Then 10 sq ft.", " Total 58."]),
        ("It is 5 ft. tall and 712 lbs. - 234 lbs.\n= 478 lbs.\nSo Dec. 5.",
         ["It is 5 ft. tall and 712 lbs. - 234 lbs.\n= 478 lbs.", "\nSo Dec. 5."]),
        ("Width = 14 sq. ft. / 7 ft.\nWidth = 2 feet.", ["Width = 14 sq. ft. / 7 ft.", "\nWidth = 2 feet."]),
        ("Let the number be X.\nThen 3X = 9. So the answer is no. Done.",
         ["Let the number be X.", "\nThen 3X = 9.", " So the answer is no.", " Done."]),
    ],
)
def test_split_on_periods(text, steps):
    assert step_texts(text) == steps


def test_spans_tile_the_text():
    text = "A is 2. B is 3.5.\nC is 4. "
    spans = split_steps(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_newline_splitter_and_unknown_splitter():
    assert len(split_steps("a = 1\nb = 2\nSo 3.", "period_or_newline")) == 3
    with pytest.raises(ValueError, match="unknown step splitter"):
        split_steps("x.", "comma")


@pytest.mark.parametrize("tok_name", ["smol_tokenizer", "sp_tokenizer"])
def test_token_spans_cover_each_step(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    rationales, _ = import_rationales("svamp", "gpt35")
    checked = 0
    for r in rationales[:200]:
        text = " " + r.rationale + " Therefore, the answer is 5."
        offset = 1
        chars = [(s + offset, e + offset) for s, e in split_steps(r.rationale)]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = step_token_spans(enc.offset_mapping, chars, text)
        assert len(spans) == len(chars)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # ordered, disjoint
        for (s, e), (cs, ce) in zip(spans, chars):
            decoded = tok.decode(enc.input_ids[s:e]).strip()
            assert decoded.replace(" ", "") == text[cs:ce].strip().replace(" ", "")
        # nothing of the answer sentence is inside a step
        assert spans[-1][1] <= len(tok(text[: chars[-1][1]], add_special_tokens=False).input_ids) + 1
        checked += 1
    assert checked == 200


def test_space_token_before_the_rationale_opens_the_first_step(smol_tokenizer):
    # SmolLM2 writes " 15" as " " + "1" + "5": the lone space is the rationale's, not the template's
    rationale = "15 apples. So 3."
    text = " " + rationale + " Therefore, the answer is 3."
    chars = [(s + 1, e + 1) for s, e in split_steps(rationale)]
    enc = smol_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc.offset_mapping[0] == (0, 1)  # the lone space token this test is about
    spans = step_token_spans(enc.offset_mapping, chars, text)
    assert spans[0][0] == 0
    assert smol_tokenizer.decode(enc.input_ids[spans[0][0]:spans[0][1]]) == " 15 apples."
