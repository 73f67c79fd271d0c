"""T5X's token cross-entropy with z-loss and label smoothing.

For logits z [B, S, V] and targets y [B, S], per token:

    log Z = logsumexp(z),  ce = -sum_v q_v (z_v - log Z) - c,  loss = ce + z_loss * (log Z)^2

where q is the (optionally smoothed) one-hot target, with confidence 1 - label_smoothing on the
target and label_smoothing / (V - 1) elsewhere, and c is q's entropy (so a perfect prediction has
zero cross-entropy). Token losses are weighted by `decoder_loss_weights` and summed.

Normalization (LOSS_NORMALIZING_FACTOR) has T5X's meaning (`t5x.losses`, `EncoderDecoderModel`):

- None: the sum, not normalized (T5X's default, and Lester et al.'s setting);
- a number: the sum divided by it (1024 * 229 for the public T5 checkpoints trained in Mesh TF);
- "NUM_REAL_TARGET_TOKENS": divided by the sum of the loss weights (a per-token mean);
- "NUM_TOTAL_TARGET_TOKENS": divided by B * S, padding included;
- "AVERAGE_PER_SEQUENCE": each sequence's weights divided by their sum (a per-sequence mean), then
  the mean over the sequences that have any weight.

The z-loss part is normalized like the loss. Adafactor's updates are nearly invariant to the
loss's scale (its update clipping is relative), so None and "NUM_REAL_TARGET_TOKENS" train alike
with it; optimizers with absolute gradient clipping are not.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def soft_targets(targets: jax.Array, vocab_size: int, label_smoothing: float) -> jax.Array:
    """One-hot targets [B, S] -> [B, S, V], smoothed as T5X does."""
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab_size - 1)
    return jax.nn.one_hot(targets, vocab_size) * (confidence - low) + low


def _smoothing_entropy(vocab_size: int, label_smoothing: float) -> float:
    """Entropy of the smoothed target distribution (T5X's normalizing constant)."""
    if label_smoothing == 0.0:
        return 0.0
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab_size - 1)
    return -(confidence * math.log(confidence) + (vocab_size - 1) * low * math.log(low + 1e-20))


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, z_loss: float = 1e-4, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy plus z-loss.

    Args:
      logits: [B, S, V] unnormalized scores (computed in float32).
      targets: [B, S] int target ids.
      z_loss: coefficient of (log Z)^2, T5X's auxiliary loss keeping log Z near zero.
      label_smoothing: mass moved from the target to the other V - 1 tokens.

    Returns:
      (loss [B, S] including z-loss, z_loss part [B, S]).
    """
    logits = logits.astype(jnp.float32)
    vocab_size = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, S]
    log_probs = logits - log_z[..., None]  # [B, S, V]
    if label_smoothing:
        q = soft_targets(targets, vocab_size, label_smoothing)  # [B, S, V]
        ce = -jnp.sum(q * log_probs, axis=-1) - _smoothing_entropy(vocab_size, label_smoothing)
    else:
        ce = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, S]
    z_term = z_loss * jnp.square(log_z)
    return ce + z_term, z_term


SPECIAL_LOSS_NORMALIZING_FACTORS = (
    "NUM_REAL_TARGET_TOKENS",
    "NUM_TOTAL_TARGET_TOKENS",
    "AVERAGE_PER_SEQUENCE",
)


def normalizing_factor_and_weights(
    loss_normalizing_factor: float | str | None, weights: jax.Array
) -> tuple[jax.Array | float, jax.Array]:
    """The divisor of the summed loss and the token weights, for T5X's LOSS_NORMALIZING_FACTOR.

    Args:
      loss_normalizing_factor: None, a number, or one of `SPECIAL_LOSS_NORMALIZING_FACTORS`
        (any case, as T5X's `convert_special_loss_normalizing_factor_to_enum`).
      weights: [B, S] float loss weights.

    Returns:
      (divisor, weights [B, S]); the weights change only for "AVERAGE_PER_SEQUENCE".

    Raises:
      ValueError: an unknown string, naming the macro and the accepted values.
    """
    if loss_normalizing_factor is None:
        return 1.0, weights
    if not isinstance(loss_normalizing_factor, str):
        return jnp.asarray(loss_normalizing_factor, jnp.float32), weights
    name = loss_normalizing_factor.upper()
    if name == "NUM_REAL_TARGET_TOKENS":
        return jnp.sum(weights), weights
    if name == "NUM_TOTAL_TARGET_TOKENS":
        return float(weights.size), weights
    if name == "AVERAGE_PER_SEQUENCE":
        per_sequence = jnp.sum(weights, axis=-1, keepdims=True)  # [B, 1]
        weights = jnp.where(per_sequence > 0, weights / jnp.maximum(per_sequence, 1e-30), 0.0)
        return jnp.sum(weights), weights
    raise ValueError(
        f"LOSS_NORMALIZING_FACTOR {loss_normalizing_factor!r} is not a number, None or one of "
        f"T5X's special factors {list(SPECIAL_LOSS_NORMALIZING_FACTORS)}."
    )


def check_normalizing_factor(loss_normalizing_factor: float | str | None) -> None:
    """Raises the `normalizing_factor_and_weights` error for a bad value, before any work."""
    normalizing_factor_and_weights(loss_normalizing_factor, jnp.ones((1, 1), jnp.float32))


def weighted_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: float | str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a batch and its parts.

    Args:
      logits: [B, S, V].
      targets: [B, S] int (0 is padding).
      weights: [B, S] loss weights (`decoder_loss_weights`, which seqio's feature converter
        always provides); None means `targets > 0`.
      z_loss: z-loss coefficient (T5X default 1e-4).
      label_smoothing: label smoothing (default 0).
      loss_normalizing_factor: T5X's LOSS_NORMALIZING_FACTOR (see the module docstring); None
        returns the sum.

    Returns:
      (loss scalar, aux) with aux `loss`, `z_loss`, `cross_ent_loss` (all normalized like the loss),
      `loss_per_nonpadding_target_token` (T5X's metric: the loss over the sum of the weights),
      `accuracy` (token accuracy over weighted tokens) and `num_tokens` (sum of weights).
    """
    if weights is None:
        weights = targets > 0
    weights = weights.astype(jnp.float32)
    token_loss, token_z = token_cross_entropy(logits, targets, z_loss, label_smoothing)
    num_tokens = jnp.sum(weights)
    divisor, loss_weights = normalizing_factor_and_weights(loss_normalizing_factor, weights)
    loss = jnp.sum(token_loss * loss_weights) / divisor
    z_part = jnp.sum(token_z * loss_weights) / divisor
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    aux = {
        "loss": loss,
        "z_loss": z_part,
        "cross_ent_loss": loss - z_part,
        "loss_per_nonpadding_target_token": loss / jnp.maximum(num_tokens, 1.0),
        "accuracy": jnp.sum(correct * weights) / jnp.maximum(num_tokens, 1.0),
        "num_tokens": num_tokens,
    }
    return loss, aux


def distillation_terms(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    token_weights: jax.Array,
    hidden_mask: jax.Array,
    temperature: float = 1.0,
    loss_normalizing_factor: float | str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """MPT's distillation terms (Wang et al., 2023): logits KL and hidden-state MSE.

    Per target token, with temperature τ and the teacher's distribution as the reference:

        kl = sum_v p_v (log p_v - log q_v),  p = softmax(teacher / τ),  q = softmax(student / τ)

    weighted by `token_weights` and normalized like the cross-entropy (LOSS_NORMALIZING_FACTOR),
    so λ_KL is relative to the CE as configured. The hidden term is the mean of
    `(student_hidden - teacher_hidden)^2` over the positions where `hidden_mask` is true and the
    H features. No gradient reaches the teacher (`stop_gradient`).

    Args:
      student_logits: [B, S, V].
      teacher_logits: [B, S, V].
      student_hidden: [B, L, H] hidden states of the student.
      teacher_hidden: [B, L, H] the teacher's at the same positions.
      token_weights: [B, S] loss weights of the target tokens.
      hidden_mask: [B, L] bool, the positions compared.
      temperature: τ > 0.
      loss_normalizing_factor: as `weighted_loss`'s.

    Returns:
      (kl scalar, mse scalar).
    """
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    teacher_hidden = jax.lax.stop_gradient(teacher_hidden.astype(jnp.float32))
    log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)  # [B, S, V]
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    token_kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)  # [B, S]
    weights = token_weights.astype(jnp.float32)
    divisor, weights = normalizing_factor_and_weights(loss_normalizing_factor, weights)
    kl = jnp.sum(token_kl * weights) / divisor
    squared = jnp.square(student_hidden.astype(jnp.float32) - teacher_hidden)  # [B, L, H]
    mask = hidden_mask.astype(jnp.float32)[..., None]  # [B, L, 1]
    count = jnp.maximum(jnp.sum(mask) * squared.shape[-1], 1.0)
    mse = jnp.sum(squared * mask) / count
    return kl, mse
