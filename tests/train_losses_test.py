"""T5X cross-entropy with z-loss and label smoothing, against torch and hand-written formulas."""

import numpy as np
import torch

from prompt_tuning.train import losses


def _batch(seed=0, b=3, s=5, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, s, v)).astype(np.float32) * 3
    targets = rng.integers(1, v, size=(b, s)).astype(np.int32)
    targets[0, 3:] = 0  # padding
    weights = (targets > 0).astype(np.float32)
    return logits, targets, weights


def test_cross_entropy_matches_torch_and_normalizes_by_target_tokens():
    logits, targets, weights = _batch()
    loss, aux = losses.weighted_loss(logits, targets, weights, z_loss=0.0)
    reference = torch.nn.functional.cross_entropy(
        torch.tensor(logits).reshape(-1, logits.shape[-1]),
        torch.tensor(targets, dtype=torch.long).reshape(-1),
        reduction="none",
    ).numpy()
    expected = (reference * weights.reshape(-1)).sum() / weights.sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(aux["num_tokens"]) == weights.sum() == 13


def test_z_loss_and_constant_normalizer():
    logits, targets, weights = _batch(1)
    loss, aux = losses.weighted_loss(
        logits, targets, weights, z_loss=1e-4, loss_normalizing_factor=100.0
    )
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    log_p = np.take_along_axis(logits - log_z[..., None], targets[..., None], -1)[..., 0]
    per_token = -log_p + 1e-4 * log_z**2
    np.testing.assert_allclose(float(loss), (per_token * weights).sum() / 100.0, rtol=1e-5)
    np.testing.assert_allclose(
        float(aux["z_loss"]), (1e-4 * log_z**2 * weights).sum() / 100.0, rtol=1e-5
    )


def test_label_smoothing_is_cross_entropy_minus_target_entropy():
    logits, targets, weights = _batch(2)
    ls, v = 0.1, logits.shape[-1]
    loss, _ = losses.weighted_loss(logits, targets, weights, z_loss=0.0, label_smoothing=ls)
    q = np.full(logits.shape, ls / (v - 1))
    np.put_along_axis(q, targets[..., None], 1 - ls, -1)
    log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    entropy = -((1 - ls) * np.log(1 - ls) + ls * np.log(ls / (v - 1)))
    per_token = -(q * log_p).sum(-1) - entropy
    np.testing.assert_allclose(float(loss), (per_token * weights).sum() / weights.sum(), rtol=1e-5)
    # A prediction equal to the smoothed target has zero loss.
    perfect, _ = losses.weighted_loss(
        np.log(q).astype(np.float32), targets, weights, z_loss=0.0, label_smoothing=ls
    )
    np.testing.assert_allclose(float(perfect), 0.0, atol=1e-5)


def test_token_accuracy_counts_weighted_positions():
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, 0, 2] = logits[0, 1, 1] = logits[0, 2, 3] = 5.0
    targets = np.array([[2, 3, 0]], np.int32)
    _, aux = losses.weighted_loss(logits, targets, None)
    assert float(aux["accuracy"]) == 0.5
