"""T5X cross-entropy with z-loss and label smoothing, against torch and hand-written formulas.

LOSS_NORMALIZING_FACTOR keeps T5X's meaning (`t5x.losses`): None sums, a number divides the sum,
and T5X's special factors are checked by hand here and against `t5x.losses` itself when T5X is
importable (`PYTHONPATH=/work/t5x_site`, see the README).
"""

import importlib.util

import numpy as np
import pytest
import torch

from prompt_tuning.train import losses


def _batch(seed=0, b=3, s=5, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, s, v)).astype(np.float32) * 3
    targets = rng.integers(1, v, size=(b, s)).astype(np.int32)
    targets[0, 3:] = 0  # padding
    weights = (targets > 0).astype(np.float32)
    return logits, targets, weights


def test_cross_entropy_matches_torch_and_sums_by_default_as_t5x():
    logits, targets, weights = _batch()
    reference = torch.nn.functional.cross_entropy(
        torch.tensor(logits).reshape(-1, logits.shape[-1]),
        torch.tensor(targets, dtype=torch.long).reshape(-1),
        reduction="none",
    ).numpy()
    total = (reference * weights.reshape(-1)).sum()
    loss, aux = losses.weighted_loss(logits, targets, weights, z_loss=0.0)
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)  # None: not normalized
    assert float(aux["num_tokens"]) == weights.sum() == 13
    np.testing.assert_allclose(
        float(aux["loss_per_nonpadding_target_token"]), total / 13, rtol=1e-5
    )
    mean, _ = losses.weighted_loss(
        logits, targets, weights, z_loss=0.0, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS"
    )
    np.testing.assert_allclose(float(mean), total / 13, rtol=1e-5)
    every, _ = losses.weighted_loss(
        logits, targets, weights, z_loss=0.0, loss_normalizing_factor="num_total_target_tokens"
    )
    np.testing.assert_allclose(float(every), total / 15, rtol=1e-5)  # B * S = 3 * 5, padding too


def test_average_per_sequence_weighs_every_sequence_equally():
    logits, targets, weights = _batch(3)
    weights[2] = 0.0  # a sequence without targets counts for nothing
    per_token, _ = losses.token_cross_entropy(logits, targets, z_loss=0.0)
    per_token = np.asarray(per_token)
    means = [(per_token[b] * weights[b]).sum() / weights[b].sum() for b in (0, 1)]
    loss, aux = losses.weighted_loss(
        logits, targets, weights, z_loss=0.0, loss_normalizing_factor="AVERAGE_PER_SEQUENCE"
    )
    np.testing.assert_allclose(float(loss), np.mean(means), rtol=1e-5)
    assert float(aux["num_tokens"]) == weights.sum()
    with pytest.raises(ValueError, match="LOSS_NORMALIZING_FACTOR 'PER_TOKEN'.*NUM_REAL_TARGET"):
        losses.weighted_loss(logits, targets, weights, loss_normalizing_factor="PER_TOKEN")


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
    per_token_mean = dict(
        z_loss=0.0, label_smoothing=ls, loss_normalizing_factor="num_real_target_tokens"
    )
    loss, _ = losses.weighted_loss(logits, targets, weights, **per_token_mean)
    q = np.full(logits.shape, ls / (v - 1))
    np.put_along_axis(q, targets[..., None], 1 - ls, -1)
    log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    entropy = -((1 - ls) * np.log(1 - ls) + ls * np.log(ls / (v - 1)))
    per_token = -(q * log_p).sum(-1) - entropy
    np.testing.assert_allclose(float(loss), (per_token * weights).sum() / weights.sum(), rtol=1e-5)
    # A prediction equal to the smoothed target has zero loss.
    perfect, _ = losses.weighted_loss(
        np.log(q).astype(np.float32), targets, weights, **per_token_mean
    )
    np.testing.assert_allclose(float(perfect), 0.0, atol=1e-5)


def test_token_accuracy_counts_weighted_positions():
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, 0, 2] = logits[0, 1, 1] = logits[0, 2, 3] = 5.0
    targets = np.array([[2, 3, 0]], np.int32)
    _, aux = losses.weighted_loss(logits, targets, None)
    assert float(aux["accuracy"]) == 0.5


@pytest.mark.skipif(importlib.util.find_spec("t5x") is None, reason="T5X is not installed")
@pytest.mark.parametrize(
    "factor",
    [None, 229.0, "NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"],
)
def test_equals_t5x_losses(factor):
    from t5x import losses as t5x_losses  # noqa: PLC0415

    logits, targets, weights = _batch(4)
    weights[1, 1] = 0.0
    batch = {"decoder_target_tokens": targets, "decoder_loss_weights": weights}
    t5x_factor, t5x_weights = t5x_losses.get_loss_normalizing_factor_and_weights(factor, batch)
    expected, expected_z, _ = t5x_losses.compute_weighted_cross_entropy(
        logits, targets, t5x_weights, label_smoothing=0.1, z_loss=1e-4,
        loss_normalizing_factor=t5x_factor,
    )  # fmt: skip
    loss, aux = losses.weighted_loss(
        logits, targets, weights, z_loss=1e-4, label_smoothing=0.1, loss_normalizing_factor=factor
    )
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(aux["z_loss"]), float(expected_z), rtol=1e-5)


def test_unknown_normalizing_factor_stops_training_before_any_work(tmp_path):
    from prompt_tuning.train import trainer  # noqa: PLC0415

    with pytest.raises(ValueError, match="LOSS_NORMALIZING_FACTOR 'tokens'"):
        trainer.train(
            model=None, model_dir=str(tmp_path / "run"), mixture_or_task_name="builtin_keyword",
            mixture_or_task_module="tasks.builtin", task_feature_lengths={}, train_steps=1,
            batch_size=1, loss_normalizing_factor="tokens",
        )  # fmt: skip
    assert not (tmp_path / "run").exists()
