"""T5X's token cross-entropy with z-loss and label smoothing.

For logits z [B, S, V] and targets y [B, S], per token:

    log Z = logsumexp(z),  ce = -sum_v q_v (z_v - log Z) - c,  loss = ce + z_loss * (log Z)^2

where q is the (optionally smoothed) one-hot target, with confidence 1 - label_smoothing on the
target and label_smoothing / (V - 1) elsewhere, and c is q's entropy (so a perfect prediction has
zero cross-entropy). Token losses are weighted by `decoder_loss_weights` and summed.

Normalization: T5X divides the sum by `loss_normalizing_factor` when given and otherwise returns the
sum. Here `None` means "divide by the number of target tokens" (the sum of the loss weights), so
the loss is a per-token mean that does not grow with the batch size; pass a float (e.g. 1024 * 229
for the public T5 checkpoints, as T5X notes) for a constant divisor.
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


def weighted_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a batch and its parts.

    Args:
      logits: [B, S, V].
      targets: [B, S] int (0 is padding).
      weights: [B, S] loss weights (`decoder_loss_weights`); None means `targets > 0`.
      z_loss: z-loss coefficient (T5X default 1e-4).
      label_smoothing: label smoothing (default 0).
      loss_normalizing_factor: divisor of the summed loss; None divides by the number of target
        tokens (sum of `weights`).

    Returns:
      (loss scalar, aux) with aux `loss`, `z_loss`, `cross_ent_loss` (all normalized like the loss),
      `accuracy` (token accuracy over weighted tokens) and `num_tokens` (sum of weights).
    """
    if weights is None:
        weights = targets > 0
    weights = weights.astype(jnp.float32)
    token_loss, token_z = token_cross_entropy(logits, targets, z_loss, label_smoothing)
    num_tokens = jnp.sum(weights)
    divisor = (
        jnp.maximum(num_tokens, 1.0)
        if loss_normalizing_factor is None
        else (jnp.asarray(loss_normalizing_factor, jnp.float32))
    )
    loss = jnp.sum(token_loss * weights) / divisor
    z_part = jnp.sum(token_z * weights) / divisor
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    aux = {
        "loss": loss,
        "z_loss": z_part,
        "cross_ent_loss": loss - z_part,
        "accuracy": jnp.sum(correct * weights) / jnp.maximum(num_tokens, 1.0),
        "num_tokens": num_tokens,
    }
    return loss, aux
