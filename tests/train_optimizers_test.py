"""Optimizers and the trainable/frozen split, against hand-computed Adafactor/AdamW updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.train import optimizers


def _params():
    rng = np.random.default_rng(0)
    return {
        "token_embedder": {"embedding": rng.normal(size=(16, 4)).astype(np.float32)},
        "encoder": {
            "prompt": {"prompt": rng.normal(size=(3, 4)).astype(np.float32)},
            "layers_0": {"mlp": {"wo": {"kernel": rng.normal(size=(8, 4)).astype(np.float32)}}},
        },
        "decoder": {"logits_dense": {"kernel": rng.normal(size=(4, 16)).astype(np.float32)}},
    }


def _adafactor_reference(param, grads, lr=0.3, decay=0.8, wd=1e-5, clip=1.0, eps=1e-30):
    """Unfactored Adafactor as in T5X's `apply_param_gradient`, in plain numpy."""
    v = np.zeros_like(param, dtype=np.float64)
    p = param.astype(np.float64)
    for step, g in enumerate(grads):
        d = 1.0 - (step + 1.0) ** (-decay)
        v = d * v + (1.0 - d) * (g.astype(np.float64) ** 2 + eps)
        u = g / np.sqrt(v)
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
        p = (1.0 - wd) * p - lr * u
    return p


def test_adafactor_matches_t5x_update_for_three_steps():
    rng = np.random.default_rng(1)
    param = rng.normal(size=(5, 7)).astype(np.float32)
    grads = [rng.normal(size=(5, 7)).astype(np.float32) * s for s in (1.0, 0.1, 3.0)]
    tx = optimizers.adafactor()
    p, state = jnp.asarray(param), tx.init(jnp.asarray(param))
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(np.asarray(p), _adafactor_reference(param, grads), rtol=2e-6)
    np.testing.assert_allclose(float(optimizers.current_learning_rate(state)), 0.3)


def test_adafactor_first_step_is_sign_times_rate_minus_decay():
    # Step 0: d = 0, so v = g^2 and u = sign(g), RMS(u) = 1 (no clipping):
    # p1 = p0 - 0.3 * sign(g) - 1e-5 * p0.
    param = jnp.array([[1.0, -2.0], [0.5, 4.0]])
    grad = jnp.array([[0.2, -3.0], [-1e-3, 7.0]])
    tx = optimizers.adafactor()
    updates, _ = tx.update(grad, tx.init(param), param)
    expected = -0.3 * np.sign(grad) - 1e-5 * np.asarray(param)
    np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-6)


def test_adafactor_factors_like_t5x_heuristic():
    # Both of the two largest dims >= 128 -> factored (row/col stats); a [100, 512] prompt is not.
    tx = optimizers.adafactor()
    factored = tx.init(jnp.zeros((128, 256)))[0][0]
    plain = tx.init(jnp.zeros((100, 512)))[0][0]
    assert factored.v_row.shape == (128,) and factored.v_col.shape == (256,)
    assert plain.v.shape == (100, 512)


def test_learning_rate_schedule_warmup_and_step_decay():
    schedule = optimizers.learning_rate_schedule(
        0.3, warmup_steps=10, decay_factor=0.5, steps_per_decay=20
    )
    values = [float(schedule(t)) for t in (0, 5, 10, 19, 20, 45)]
    np.testing.assert_allclose(values, [0.0, 0.15, 0.3, 0.3, 0.15, 0.075], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_factor and steps_per_decay"):
        optimizers.learning_rate_schedule(0.3, decay_factor=0.5)


def test_adamw_first_step():
    # Bias-corrected Adam's first update is g / (|g| + eps); decay is added before the rate.
    param, grad = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, -0.25, 2.0])
    tx = optimizers.adamw(learning_rate=0.01, weight_decay=0.1, global_norm_clip=None)
    updates, _ = tx.update(grad, tx.init(param), param)
    g, p = np.asarray(grad), np.asarray(param)
    expected = -0.01 * (g / (np.abs(g) + 1e-8) + 0.1 * p)
    np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-5)


def test_mask_covers_only_the_regex():
    params = _params()
    mask = optimizers.trainable_mask(params)
    flat = {optimizers.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat == {
        "token_embedder/embedding": False,
        "encoder/prompt/prompt": True,
        "encoder/layers_0/mlp/wo/kernel": False,
        "decoder/logits_dense/kernel": False,
    }
    trainable, frozen = optimizers.split_params(params, "prompt|logits_dense")
    assert set(trainable) == {"encoder", "decoder"}
    assert "prompt" not in frozen["encoder"] and "decoder" not in frozen
    merged = optimizers.merge_params(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        assert a is b


def test_regex_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="TRAINABLE_PARAMS_REGEX 'adapter'"):
        optimizers.split_params(_params(), "adapter")


def test_optimizer_state_only_for_trainable_params():
    trainable, _ = optimizers.split_params(_params())
    for tx in (optimizers.adafactor(), optimizers.adamw()):
        shapes = {np.shape(x) for x in jax.tree.leaves(tx.init(trainable)) if np.size(x) > 1}
        assert shapes == {(3, 4)}  # only the prompt's moments; frozen weights have none
