"""The rationale token weighting module of KPOD (Sec. 3.3, Eqs. 2-4) and its Gumbel-Softmax mask sampler.

    e = Att(Emb(r))                  (Eq. 2)  frozen pre-trained input embedding, one trainable self-attention layer
    w_j = sigmoid(f_w(e_j))          (Eq. 3)  f_w a two-layer MLP; w_j = probability that token j is kept
    m_j = GumbelSoftmax(w_j)         (Eq. 4)  a sample over {keep (1), mask (0)}: relaxed (in (0, 1)) by
                                              default, or hard with the straight-through gradient

The self-attention layer is a pre-norm residual block (e = x + MHA(LN(x)), x = projected embedding +
sinusoidal positions): the residual keeps each token's own identity, which the weight depends on most,
while the attention adds its context. The training loop lives in `kpod.weighting.train`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from kpod.weighting.config import WeightingConfig


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed sine/cosine position encodings, shape [length, dim] (no length limit, nothing to learn)."""
    positions = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(positions * freqs)
    table[:, 1::2] = torch.cos(positions * freqs[: dim // 2])
    return table


class TokenWeightingModule(nn.Module):
    """Maps rationale token ids to keep probabilities w_j in (0, 1) (Eqs. 2-3).

    The embedding table is copied and frozen, so the module stays fixed even when the model it came
    from trains on (the student, or a predictor in 'full' mode that shares it). The copy is not part of
    `state_dict()`: to reload saved weights, build the module from the same embedding first.
    """

    def __init__(self, embedding: nn.Embedding | torch.Tensor, config: WeightingConfig):
        super().__init__()
        table = embedding.weight if isinstance(embedding, nn.Embedding) else embedding
        # A buffer, not a parameter: frozen, moves with .to(), and kept out of the optimiser.
        self.register_buffer("embedding_table", table.detach().float().clone(), persistent=False)
        embed_dim = table.shape[1]
        self.use_positions = config.use_positions
        self.logit_bound = config.logit_bound
        self.input_projection = nn.Linear(embed_dim, config.hidden_size)
        # Pre-trained embeddings can be tiny (std 0.02 at init); normalising makes token identity O(1)
        # whatever the source model, so that it is not drowned by the position signal.
        self.input_norm = nn.LayerNorm(config.hidden_size)
        self.position_scale = nn.Parameter(torch.tensor(0.1))
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(config.hidden_size)
        self.weight_generator = nn.Sequential(
            nn.Linear(config.hidden_size, config.mlp_hidden_size),
            nn.GELU(),
            nn.Linear(config.mlp_hidden_size, 1),
        )
        # Start every token at w = initial_keep_probability: the predictor first sees nearly whole rationales.
        # Small (not zero) last-layer weights, so that gradients still reach the first MLP layer.
        last = self.weight_generator[-1]
        nn.init.normal_(last.weight, std=1e-3)
        p = config.initial_keep_probability
        logit = math.log(p / (1.0 - p))
        if abs(logit) >= config.logit_bound:
            raise ValueError(f"initial_keep_probability={p} lies outside the logit bound {config.logit_bound}")
        start = config.logit_bound * math.atanh(logit / config.logit_bound)
        nn.init.constant_(last.bias, start)
        # With centring the bias cancels out; the common keep level is then this one scalar (see center_logits).
        self.keep_level = nn.Parameter(torch.tensor(start)) if config.center_logits else None

    def logits(self, token_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Keep logits z_j with w_j = sigmoid(z_j).

        token_ids, attention_mask: [B, L] (mask 1 = real token, 0 = padding). Returns [B, L] float;
        padded positions hold arbitrary finite values.
        """
        x = self.input_norm(self.input_projection(self.embedding_table[token_ids]))  # [B, L, H]
        if self.use_positions:
            # Positions start as a small addition to token identity; the layer learns how much they matter.
            x = x + self.position_scale * sinusoidal_positions(x.shape[1], x.shape[2], x.device)
        h = self.attention_norm(x)
        padding = attention_mask == 0
        attended, _ = self.attention(h, h, h, key_padding_mask=padding, need_weights=False)
        e = x + attended  # Eq. 2
        raw = self.weight_generator(self.mlp_norm(e)).squeeze(-1)  # Eq. 3 before the sigmoid
        if self.keep_level is not None:
            real = attention_mask.to(raw.dtype)
            mean = (raw * real).sum(-1, keepdim=True) / real.sum(-1, keepdim=True).clamp_min(1.0)
            raw = raw - mean + self.keep_level
        # A soft bound: the many filler tokens cannot be pushed towards -inf through the shared layers
        # (which drags the few keypoints down with them), and w stays strictly inside (0, 1).
        return self.logit_bound * torch.tanh(raw / self.logit_bound)

    def forward(self, token_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Keep probabilities w = sigmoid(z), shape [B, L] (Eq. 3)."""
        return torch.sigmoid(self.logits(token_ids, attention_mask))


def gumbel_keep_mask(
    keep_logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None, hard: bool = True
) -> torch.Tensor:
    """Straight-through Gumbel-Softmax sample over the two classes {keep, mask} (Eq. 4).

    keep_logits: [...] logits z_j of w_j = sigmoid(z_j). The class log-probabilities are
    log w_j = logsigmoid(z_j) and log(1 - w_j) = logsigmoid(-z_j). Returns m of the same shape with
    values exactly 0. or 1. (1 = kept) in the forward pass; its gradient is that of the relaxed sample
    softmax((log p + g) / temperature)[keep]. Noise comes from `generator` so runs repeat exactly.
    """
    log_probs = torch.stack([F.logsigmoid(keep_logits), F.logsigmoid(-keep_logits)], dim=-1)  # [..., 2]
    uniform = torch.rand(log_probs.shape, generator=generator, device=keep_logits.device, dtype=log_probs.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    soft_keep = torch.softmax((log_probs + gumbel) / temperature, dim=-1)[..., 0]
    if not hard:
        return soft_keep
    hard_keep = (soft_keep > 0.5).to(soft_keep.dtype)  # argmax over the two classes
    return hard_keep + (soft_keep - soft_keep.detach())  # exactly 0/1 forward, gradient of soft_keep


def temperature_at(step: int, total_steps: int, config: WeightingConfig) -> float:
    """Gumbel-Softmax temperature at `step` in [0, total_steps) under the configured annealing."""
    start, end = config.temperature_start, config.temperature_end
    if config.temperature_schedule == "constant" or total_steps <= 1:
        return start
    progress = min(step / (total_steps - 1), 1.0)
    if config.temperature_schedule == "linear":
        return start + (end - start) * progress
    return start * (end / start) ** progress
