"""Shared fixtures: SmolLM2's real tokenizer, a SentencePiece-style (T5-family) tokenizer, tiny random students."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KPOD_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_or_skip() -> Path:
    if not (SHARED_DATA / "splits" / "kpod_splits.json").exists():
        pytest.skip("the full data folder (../shared/data) is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_or_skip()


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The default student's real tokenizer (byte-level BPE, LLaMA family)."""
    from kpod.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def sp_tokenizer():
    """A small SentencePiece-style Unigram tokenizer (Metaspace, like T5's), trained on SVAMP texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kpod.data.datasets import load_split
    from kpod.data.rationales import import_rationales

    texts = [q.question for q in load_split("svamp", "train")]
    texts += [r.rationale for r in import_rationales("svamp", "gpt35")[0]]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a model folder that kpod loads like any student."""
    from kpod.models import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama", smol_tokenizer).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, smol_tokenizer) -> Path:
    from kpod.models import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-t5")
    build_tiny_model("t5", smol_tokenizer).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder
