"""The four benchmarks of the paper, read from their real file formats with the paper's exact splits.

Membership of train/dev/test comes from `splits/kpod_splits.json` in the data folder (the MCC-KD splits that KPOD
uses: GSM8K 7473/660/659, ASDiv 1462/313/314, SVAMP 700/150/150, CSQA 8520/1221/1221). Datasets are described
as specs (file, reader, answer type), not as code branches.

    >>> from kpod.data.datasets import load_split
    >>> test = load_split("svamp", "test")          # uses the data shipped with kpod
    >>> len(test), test[0].id
    (150, 'chal-429')
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from kpod.data.answers import answer_type, normalize_gold
from kpod.data.records import DataError, Question, read_jsonl

SPLITS = ("train", "dev", "test")
# "all": train + dev + test, every question of a benchmark, for testing a student that trained on another one
EVAL_SPLITS = (*SPLITS, "all")
SPLITS_FILE = "splits/kpod_splits.json"
PACKAGED_DATA = Path(__file__).resolve().parents[1] / "resources" / "data"


def default_data_dir() -> Path:
    """`$KPOD_DATA_DIR` if set, else the data shipped inside the package (SVAMP and its GPT-3.5 rationales)."""
    env = os.environ.get("KPOD_DATA_DIR")
    return Path(env) if env else PACKAGED_DATA


# A raw reader returns {key: (question text, raw gold answer, choices or None)} for one source file.
RawItems = dict[str, tuple[str, str, list[str] | None]]


def _read_gsm8k(path: Path, prefix: str) -> RawItems:
    out: RawItems = {}
    for lineno, row in read_jsonl(path):
        _require(row, ("question", "answer"), path, lineno)
        out[f"{prefix}-{lineno - 1}"] = (row["question"].strip(), row["answer"], None)
    return out


def _read_svamp(path: Path) -> RawItems:
    rows = _read_json(path)
    out: RawItems = {}
    for i, row in enumerate(rows):
        _require(row, ("ID", "Body", "Question", "Answer"), path, i + 1, what="item")
        # The question text MCC-KD and the released rationales use: Body + " " + Question.
        text = f"{row['Body'].strip()} {row['Question'].strip()}".strip()
        out[row["ID"]] = (text, str(row["Answer"]), None)
    return out


def _read_asdiv(path: Path) -> RawItems:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from None
    out: RawItems = {}
    for prob in root.iter("Problem"):
        body = (prob.findtext("Body") or "").strip()
        question = (prob.findtext("Question") or "").strip()
        out[prob.get("ID")] = (f"{body} {question}".strip(), (prob.findtext("Answer") or "").strip(), None)
    return out


def _read_csqa(path: Path) -> RawItems:
    out: RawItems = {}
    for lineno, row in read_jsonl(path):
        _require(row, ("id", "question", "choices", "answer"), path, lineno)
        out[row["id"]] = (row["question"].strip(), row["answer"], list(row["choices"]))
    return out


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sources: dict[str, str]  # split -> file under the data dir
    read: Callable[[Path, str], RawItems]
    key: Callable[[str, object], str]  # (split, raw id in the splits file) -> key in the raw items
    license: str

    @property
    def answer_type(self) -> str:
        return answer_type(self.name)


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec(
        "gsm8k",
        {"train": "raw/gsm8k/train.jsonl", "dev": "raw/gsm8k/test.jsonl", "test": "raw/gsm8k/test.jsonl"},
        lambda p, split: _read_gsm8k(p, "gsm8k-train" if split == "train" else "gsm8k-test"),
        lambda split, i: f"gsm8k-{'train' if split == 'train' else 'test'}-{i}",
        "MIT (openai/grade-school-math)",
    ),
    "asdiv": DatasetSpec(
        "asdiv",
        dict.fromkeys(SPLITS, "raw/asdiv/ASDiv.xml"),
        lambda p, split: _read_asdiv(p),
        lambda split, i: str(i),
        "CC BY-NC 4.0, non-commercial research use only (chaochun/nlu-asdiv-dataset)",
    ),
    "svamp": DatasetSpec(
        "svamp",
        dict.fromkeys(SPLITS, "raw/svamp/SVAMP.json"),
        lambda p, split: _read_svamp(p),
        lambda split, i: str(i),
        "MIT (arkilpatel/SVAMP)",
    ),
    "csqa": DatasetSpec(
        "csqa",
        {
            "train": "rationales/palm-dss/cqa/cqa_train.json",
            "dev": "rationales/palm-dss/cqa/cqa_train.json",
            "test": "rationales/palm-dss/cqa/cqa_test.json",
        },
        lambda p, split: _read_csqa(p),
        lambda split, i: str(i),
        "MIT (CommonsenseQA, via google-research/distilling-step-by-step, Apache-2.0)",
    ),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or a JSONL file of your own)")
    return DATASETS[name]


def load_split(name: str, split: str, data_dir: str | Path | None = None) -> list[Question]:
    """The questions of one split, in the order of the splits file, with normalised gold answers ("all": those of
    train, dev and test in that order)."""
    spec = get_spec(name)
    if split == "all":
        return [q for part in SPLITS for q in load_split(name, part, data_dir)]
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; known: {', '.join(EVAL_SPLITS)}")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    ids = split_ids(name, split, data_dir)
    source = data_dir / spec.sources[split]
    if not source.exists():
        raise DataError(
            f"{source}: file not found. Dataset {name!r} needs {spec.sources[split]} under the data folder; "
            "pass --data-dir (or set KPOD_DATA_DIR) to a folder laid out like the one kpod ships"
        )
    raw = _read_raw(spec.name, split, str(source))
    questions = []
    for i in ids:
        key = spec.key(split, i)
        if key not in raw:
            raise DataError(f"{data_dir / SPLITS_FILE}: {name}/{split} id {i!r} not found in {source}")
        text, gold_raw, choices = raw[key]
        if not text:
            raise DataError(f"{source}: item {key} has an empty question")
        gold = normalize_gold(gold_raw, name) if choices is None else normalize_gold(gold_raw, name, choices)
        if gold is None:
            raise DataError(f"{source}: item {key} has a gold answer kpod cannot read: {gold_raw!r}")
        questions.append(Question(id=key, question=text, answer=gold, dataset=name, choices=choices))
    return questions


def split_ids(name: str, split: str, data_dir: Path) -> list:
    splits = _read_splits(str(data_dir / SPLITS_FILE))
    if name not in splits:
        raise DataError(f"{data_dir / SPLITS_FILE}: no entry for dataset {name!r}")
    return list(splits[name][split]["ids"])


def split_counts(data_dir: str | Path | None = None) -> dict[str, dict[str, int]]:
    """Train/dev/test counts of every dataset whose files are present (others are reported as missing)."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    out: dict[str, dict] = {}
    for name in DATASETS:
        try:
            out[name] = {split: len(load_split(name, split, data_dir)) for split in SPLITS}
        except DataError as e:
            out[name] = {"missing": str(e)}
    return out


@lru_cache(maxsize=8)
def _read_splits(path: str) -> dict:
    return _read_json(Path(path))


@lru_cache(maxsize=16)
def _read_raw(name: str, split: str, source: str) -> RawItems:
    return DATASETS[name].read(Path(source), split)


def _read_json(path: Path):
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _require(row: dict, fields: tuple[str, ...], path: Path, lineno: int, what: str = "line") -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise DataError(f"{path}:{lineno}: {what} lacks field(s) {', '.join(missing)}")
