"""Inputs and settings of the rationale token weighting stage (KPOD Sec. 3.3, Eqs. 2-7).

`WeightingExample` is one training item in the student's token ids; `WeightingConfig` holds every knob
of the weighting module and of its training loop, each with the reason for its default. The defaults
were chosen by measurement on the synthetic keypoint tasks of `tests/test_weighting.py` (see the
docstring of `kpod.weighting.train` for the numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpod.options import LaterOptions


@dataclass
class WeightingExample:
    """One rationale to weight, as token ids of the student's tokenizer.

    `rationale_ids` are the teacher rationale's tokens (the ones that get a weight); `answer_ids` are the
    answer text's tokens (for example " 32."), the only tokens the answer predictor is scored on.
    """

    question_ids: list[int]
    rationale_ids: list[int]
    answer_ids: list[int]


MaskRepresentation = Literal["mask_embedding", "zero", "drop"]
PredictorMode = Literal["frozen", "lora", "full"]
TemperatureSchedule = Literal["exponential", "linear", "constant"]
GradientEstimator = Literal["gumbel_softmax", "score_function"]
MaskLossNormalisation = Literal["per_token", "sum"]
AnswerPrefixes = Literal["every", "whole"]


class WeightingConfig(LaterOptions, BaseModel):
    """Settings of the token weighting module and of its training (paper: alpha = 0.5, the rest unstated)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Added after weights were cached and grids reported (see `kpod.options`), with the values of the time before.
    ADDED_LATER: ClassVar[dict[str, object]] = {
        "gradient_estimator": "gumbel_softmax", "score_function_samples": 4, "center_logits": False,
        "answer_prefixes": "every",
    }
    ADDED_AFTER_CELLS: ClassVar[tuple[str, ...]] = (
        "gradient_estimator", "score_function_samples", "center_logits", "answer_prefixes",
    )

    # --- the loss (Eqs. 5-7) ---
    alpha: float = Field(
        0.5,
        ge=0.0,
        description="Weight of the mask-ratio loss L_m in L = L_p + alpha * L_m (Eq. 7; paper: 0.5). "
        "0 keeps every token (no pressure to mask); large values mask everything, keypoints included.",
    )
    mask_loss_normalisation: MaskLossNormalisation = Field(
        "per_token",
        description="'per_token': L_m = mean_j m_j and L_p = mean over prefix lengths of the answer NLL; "
        "'sum': L_m = sum_j m_j and L_p = sum over all prefix lengths (Eqs. 5-6 literally, estimated as "
        "(L+1) x the sampled mean). Both give the same keep/mask trade-off per token (the ratio of the two "
        "terms is the same); 'sum' only weighs each rationale by its length, which makes the step size "
        "depend on rationale length, so 'per_token' is the default.",
    )
    num_prefix_lengths: int = Field(
        1,
        ge=1,
        description="Prefix lengths k sampled per example and step for Eq. 5 (uniform over 0..L, with "
        "replacement: an unbiased estimate of the mean over all L+1 prefixes). More = less variance, "
        "proportionally more predictor compute. 1, 2 and 4 all worked on the synthetic task; on the real "
        "SVAMP rationales 1 sample per rationale with a frozen predictor separated digits from words in 30 "
        "steps (results/weighting_cost.md), at half the cost of 2.",
    )

    answer_prefixes: AnswerPrefixes = Field(
        "every",
        description="Which masked rationale prefixes the predictor answers from. 'every' (the paper's Eq. 5): prefix "
        "lengths sampled uniformly over 0..L (num_prefix_lengths per rationale). 'whole' (not in the paper): the "
        "whole masked rationale only, one row per rationale, so num_prefix_lengths is not read (with "
        "mask_loss_normalisation 'sum', L_p is still scaled by L + 1, as for the sum over prefixes). Meant for multi-step "
        "rationales whose answer can only be read at the end: on GSM8K the frozen default student answers worse from "
        "a partial rationale than from none, so most sampled prefixes reward masking "
        "(results/weighting_objective_gsm8k.md). "
        "Measured at alpha 0.5 (30 steps, 3 weighting seeds): on GSM8K every seed keeps every token (0.95-0.998), on "
        "SVAMP two of three do (results/weighting_seeds_*_whole.md). On the whole rationale, masking part of it costs "
        "the answer far more than the mask loss saves: of keep all, mask all and keypoints only, the last scores best "
        "for alpha 4.7-11 on SVAMP and for no alpha on GSM8K (results/weighting_objective_*.md).",
    )

    # --- the module (Eqs. 2-3) ---
    hidden_size: int = Field(
        128,
        ge=8,
        description="Width of the self-attention layer; the frozen input embedding is projected to it. "
        "Small is enough: the module only has to tell keypoints from filler.",
    )
    num_heads: int = Field(4, ge=1, description="Attention heads of the self-attention layer (must divide hidden_size).")
    mlp_hidden_size: int = Field(128, ge=1, description="Hidden width of the two-layer MLP weight generator f_w (Eq. 3).")
    use_positions: bool = Field(
        True,
        description="Add sinusoidal position encodings before the self-attention layer. Without them the "
        "layer sees the rationale as a bag of tokens, so two equal tokens always get the same weight.",
    )
    logit_bound: float = Field(
        6.0,
        gt=0.0,
        description="Keep logits are bounded softly to (-b, b) (b * tanh(z / b)), so w lies in "
        "(sigmoid(-b), sigmoid(b)) = (0.0025, 0.9975) for b = 6. Without a bound the mask loss keeps "
        "pushing already-masked filler down through the shared layers and can drag keypoints along.",
    )
    center_logits: bool = Field(
        False,
        description="Not in the paper. True: f_w's outputs are centred over each rationale's tokens and one learned "
        "scalar, the keep level, is added back (z_j = f_w(e_j) - mean_k f_w(e_k) + level, before the bound), so the "
        "shared layers learn only how tokens differ and the mask loss lowers every token together through the "
        "level alone. Meant against the drift seen on GSM8K (results/weighting_trajectory_gsm8k_lr3e-3.md), where "
        "the mask loss moved every token as one, or first separated keypoints and then dragged them down with "
        "the rest.",
    )
    initial_keep_probability: float = Field(
        0.9,
        gt=0.0,
        lt=1.0,
        description="Initial w_j (set through the bias of f_w's last layer). Starting near 1 lets the "
        "predictor see nearly whole rationales first; near 0.5 starts from maximal sampling noise.",
    )

    # --- the mask (Eq. 4) ---
    mask_representation: MaskRepresentation = Field(
        "mask_embedding",
        description="How a masked token reaches the predictor. 'mask_embedding': its input embedding is "
        "replaced by one learned vector (m_j * emb_j + (1 - m_j) * mask_vec); 'zero': replaced by zeros; "
        "'drop': removed from the sequence when its sample is below 0.5 (positions close up), the kept ones "
        "mixed with the mask vector as in 'mask_embedding' (a dropped token's gradient then comes from L_m "
        "alone in that step). Measured: 'mask_embedding' and 'drop' separate keypoints equally well "
        "(digit w 0.997, filler 0.003), 'zero' less sharply (digit 0.88-0.90, filler 0.005-0.03): RMSNorm "
        "models ignore the scale of an input vector, so a scaled-down token still reads as itself. On the GSM8K "
        "rationales with the default student, digits and operators alone answer nearly as well as the whole rationale "
        "when the rest is dropped and far worse when it is replaced by the mask vector "
        "(results/weighting_objective_gsm8k*.md), yet with 'drop' the Gumbel-Softmax training masked every token in 2-3 "
        "of 3 weighting seeds (results/weighting_seeds_gsm8k_drop*.md).",
    )
    hard_mask: bool = Field(
        False,
        description="True: hard 0/1 samples go forward with the relaxed sample's gradient (straight-through "
        "Gumbel-Softmax). False: the relaxed sample itself (values in (0, 1), near 0/1 once w saturates) goes "
        "forward. Measured on the synthetic task (6 runs each): straight-through ended with every token "
        "masked in 6 of 6 (the predictor's response to swapping an embedding is far from linear, so the "
        "straight-through gradient barely sees the keypoints), the relaxed sample separated digits "
        "(w 0.997) from filler (w 0.003) in 6 of 6.",
    )
    gradient_estimator: GradientEstimator = Field(
        "gumbel_softmax",
        description="How the answer loss L_p reaches the module. 'gumbel_softmax' (the paper's): the gradient "
        "flows through the predictor to the (relaxed or straight-through) Gumbel-Softmax sample of Eq. 4. "
        "'score_function' (not in the paper): hard 0/1 masks m ~ Bernoulli(w) go forward, each scored by the "
        "predictor's answer loss without backpropagating through it, and the module follows "
        "(L_p(m) - baseline) * grad log P(m), the baseline being the mean loss of the other masks drawn for "
        "the same rationale and prefix; L_m is the expected keep ratio mean_j w_j (exact gradient). It sees "
        "what masking a token really does to the answer, which the gradient at a single input does not: with "
        "Gemma 3 270M masking the digits costs +4.2 nats of answer loss while the Gumbel-Softmax weights "
        "stayed one constant (results/weighting_by_student.md). Needs predictor_mode 'frozen'; the mask "
        "vector stays at its start (the mean input embedding). Its gradient is noisier: on the synthetic task "
        "(60 steps, 3 seeds, 4 or 8 masks) lr 1e-2 failed in 2 of 6 runs (every token kept, or the digits "
        "masked), lr 3e-3 and 1e-3 separated digits (w 1.00) from filler (w <= 0.01) in 6 of 6 each: use lr 3e-3. "
        "On real rationales it did not help at 30 steps of 8: both shipped students kept every token at alpha 0.5 "
        "and masked every token at alpha 10 (results/weighting_score_function*.md).",
    )
    score_function_samples: int = Field(
        4,
        ge=2,
        description="Masks drawn per rationale and step with gradient_estimator 'score_function'; each is "
        "compared with the mean of the others (leave-one-out baseline), so at least 2. The predictor reads "
        "this many times the rows of a Gumbel-Softmax step, in forward passes only.",
    )
    temperature_start: float = Field(1.0, gt=0.0, description="Gumbel-Softmax temperature at the first step.")
    temperature_end: float = Field(
        0.5,
        gt=0.0,
        description="Gumbel-Softmax temperature at the last step. With hard_mask (straight-through) the samples "
        "are 0/1 at every temperature and it only scales the surrogate gradient, which grows as 1/tau; with the "
        "default relaxed samples it also sets how close to 0/1 they are (w = 0.9: 92 % of the samples lie "
        "inside (0.01, 0.99) at tau 1, 52 % at 0.5). Very low end values make late steps noisy.",
    )
    temperature_schedule: TemperatureSchedule = Field(
        "exponential",
        description="How the temperature goes from start to end over the training steps: 'exponential' "
        "(geometric), 'linear', or 'constant' (stays at temperature_start).",
    )

    # --- the answer predictor (Eq. 5) ---
    predictor_mode: PredictorMode = Field(
        "frozen",
        description="Which predictor parameters train with the module: 'frozen' (none; gradients still "
        "flow through it to the module), 'lora' (LoRA adapters, see lora_rank), 'full' (all). The paper "
        "fine-tunes a pre-trained FlanT5-Large. Measured on the real SVAMP rationales with the default "
        "student as predictor (30 steps, lr 1e-2): 'frozen' took 4.9 s/step and gave digits w 0.998 against "
        "0.28-0.35 for other words; 'lora' took 7.3 s/step and left every class at 0.88 (the predictor's own "
        "learning moves the answer loss more than any mask does, so the module gets no steady signal). "
        "On the GSM8K rationales, 'lora' after 44 warm-up steps kept every token in all three weighting seeds "
        "(results/weighting_seeds_gsm8k_lora_warmup.md). "
        "'frozen' suits a predictor that already reads question + rationale, as a pre-trained LM does.",
    )
    predictor_warmup_steps: int = Field(
        0,
        ge=0,
        description="Steps that train only the predictor on unmasked rationales (random prefixes, no mask) "
        "before the joint training, so that it learns the prompt format first. Ignored when frozen.",
    )
    copy_predictor: bool = Field(
        True,
        description="Train a deep copy of the predictor, leaving the caller's model unchanged (LoRA and "
        "full modes change weights; LoRA injects layers). Set False to save memory when the predictor "
        "is a throwaway model.",
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank when predictor_mode is 'lora'.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha when predictor_mode is 'lora'.")

    # --- optimisation ---
    lr: float = Field(
        1e-2,
        gt=0.0,
        description="Adam learning rate of the weighting module and the mask vector. With the default frozen "
        "predictor, 1e-2 separates digits from words on real rationales within 30 steps (1e-3 moved the "
        "weights by under 0.05 in 24 steps). With a trainable predictor use 1e-3: on the synthetic task 3e-3 "
        "collapsed (every token masked) in 1 of 26 runs, 1e-3 in none of ~90.",
    )
    predictor_lr: float = Field(
        1e-4,
        gt=0.0,
        description="Adam learning rate of the trainable predictor parameters (LoRA adapters or all "
        "weights). A predictor that learns fast can learn to read the faint trace of a softly masked "
        "token, and then the module masks keypoints too; keep it below the module's lr (about 1e-5 for "
        "'full' on a real pre-trained model).",
    )
    batch_size: int = Field(16, ge=1, description="Rationales per step; each contributes num_prefix_lengths predictor rows.")
    epochs: int = Field(3, ge=1, description="Passes over the examples (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Joint training steps; overrides epochs when set.")
    max_train_examples: int | None = Field(
        None,
        ge=1,
        description="Train on at most this many examples (a seeded random subset); the weights are still "
        "computed for every example. The module reads tokens in context, not example identities, so a "
        "subset of a few hundred rationales is a cheap way to cut the predictor's cost on a CPU.",
    )
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm per step.")
    seed: int = Field(0, description="Seeds module init, batch order, Gumbel noise and prefix sampling.")

    # --- lengths ---
    max_question_tokens: int = Field(256, ge=1, description="Question tokens kept in training (the tail is cut).")
    max_rationale_tokens: int = Field(
        384,
        ge=1,
        description="Rationale tokens used in training (the tail is cut). Inference weights every token "
        "of every rationale, however long.",
    )
    max_answer_tokens: int = Field(16, ge=1, description="Answer tokens scored in training (the tail is cut).")
    inference_batch_size: int = Field(64, ge=1, description="Rationales per batch when computing the final weights.")

    @model_validator(mode="after")
    def _check_heads(self) -> "WeightingConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.gradient_estimator == "score_function" and self.predictor_mode != "frozen":
            raise ValueError(
                "gradient_estimator='score_function' scores masks with forward passes only and trains no "
                f"predictor; set predictor_mode='frozen' (got {self.predictor_mode!r})"
            )
        return self
