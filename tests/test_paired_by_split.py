"""bench/paired_by_split.py: a whole-benchmark column split back into train, dev and test, and compared per split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kpod.data.datasets import SPLITS, load_split

ROOT = Path(__file__).resolve().parents[1]
COLUMN = "svamp all (from gsm8k)"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("paired_by_split", ROOT / "bench" / "paired_by_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(method: str, seed: int, outcomes: list[bool], digest: str, column: str = COLUMN) -> dict:
    answers = "".join("1" if o else "0" for o in outcomes)
    return {"cell": f"gsm8k-{method}-s{seed}", "method": method, "seed": seed, "done": True,
            "accuracy": {column: {"outcomes": answers, "questions": digest, "n": len(answers),
                                  "correct": answers.count("1")}}}


def test_each_split_is_compared_on_its_own_questions(bench, shared_data):
    sizes = {s: len(load_split("svamp", s, shared_data)) for s in SPLITS}
    bounds, digest, test_digest = bench.split_bounds("svamp", shared_data)
    assert [bounds[s].stop - bounds[s].start for s in SPLITS] == [sizes[s] for s in SPLITS]
    n = sum(sizes.values())
    # A answers exactly the train questions right, B exactly the test ones; A's seed 1 also one dev question.
    on_train = [i < sizes["train"] for i in range(n)]
    on_test = [i >= sizes["train"] + sizes["dev"] for i in range(n)]
    a1 = list(on_train)
    a1[sizes["train"]] = True
    report = {"cells": [_cell("a", 0, on_train, digest), _cell("a", 1, a1, digest), _cell("b", 0, on_test, digest),
                        _cell("b", 1, on_test, digest), _cell("a", 2, on_train, digest)]}  # seed 2: A alone, left out
    rows = {r["questions_of"]: r for r in bench.by_split(report, "a", "b", shared_data)}
    assert list(rows) == ["train", "dev", "test", "train + dev", "all"]
    assert all(r["seeds"] == [0, 1] for r in rows.values())
    assert (rows["train"]["accuracy_a"], rows["train"]["accuracy_b"]) == (100.0, 0.0)
    assert (rows["test"]["accuracy_a"], rows["test"]["accuracy_b"]) == (0.0, 100.0)
    assert rows["dev"]["questions"] == sizes["dev"] and rows["dev"]["questions_differing"] == 1
    assert rows["dev"]["per_seed_a"] == {0: 0.0, 1: round(100 / sizes["dev"], 2)}
    assert rows["train + dev"]["questions"] == sizes["train"] + sizes["dev"]
    assert rows["all"]["difference"] == round(100 * (sizes["train"] - sizes["test"] + 0.5) / n, 2)

    # The test part against an earlier report tested on the test split alone: B's answers there differ on one.
    before = [True] * sizes["test"]
    before[0] = False
    earlier = {"cells": [_cell("b", 0, before, test_digest, "svamp (from gsm8k)")]}
    (agreement,) = bench.test_split_agreement(report, earlier, ["a", "b"], shared_data)
    assert (agreement["method"], agreement["seed"], agreement["same_answers"]) == ("b", 0, sizes["test"] - 1)
    assert (agreement["right_now"], agreement["right_before"]) == (sizes["test"], sizes["test"] - 1)


def test_answers_for_other_questions_are_refused(bench, shared_data):
    _, digest, _ = bench.split_bounds("svamp", shared_data)
    report = {"cells": [_cell("a", 0, [True], "0123456789abcdef"), _cell("b", 0, [False], "0123456789abcdef")]}
    with pytest.raises(SystemExit, match="not for the questions"):
        bench.by_split(report, "a", "b", shared_data)
    with pytest.raises(SystemExit, match="nothing to split"):
        bench.by_split({"cells": [_cell("a", 0, [True], digest, "svamp (from gsm8k)")]}, "a", "b", shared_data)
