"""Optimizers and the trainable/frozen split, against hand-computed Adafactor/AdamW updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import prompts
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5.network import EncoderDecoder
from prompt_tuning.train import factoring, optimizers
from prompt_tuning.train.model import PromptModel


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


def _factored_reference(param, grad, rows, cols, lr=0.3, wd=1e-5, clip=1.0, eps=1e-30):
    """One factored Adafactor step (step 0, so v = g^2 + eps) as T5X computes it, in numpy.

    Returns (new param, v_row, v_col).
    """
    squared = grad.astype(np.float64) ** 2 + eps
    v_row, v_col = squared.mean(axis=cols), squared.mean(axis=rows)
    reduced = tuple(d - sum(c < d for c in cols) for d in rows)
    row_factor = (v_row / v_row.mean(axis=reduced, keepdims=True)) ** -0.5
    u = grad * np.expand_dims(row_factor, cols) * np.expand_dims(v_col**-0.5, rows)
    u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
    return (1.0 - wd) * param - lr * u, v_row, v_col


def _one_step(tx, params, grads):
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    factored = lambda x: isinstance(x, optax.FactoredState)  # noqa: E731
    (stats,) = [x for x in jax.tree.leaves(state, is_leaf=factored) if factored(x)]
    return optax.apply_updates(params, updates), stats


def test_adafactor_factors_by_logical_axes_never_the_prompt():
    # Lester et al.'s factor rules: a prompt is never factored, even at P = 150 where the size
    # heuristic (both dims >= 128) would; model weights are factored as T5X factors them.
    rng = np.random.default_rng(2)
    shapes = {
        "prompt": (150, 256),  # ("prompt", "prompt_embed")
        "wi": (256, 384),  # ("embed", "mlp"): factored, rows = embed
        "small": (64, 384),  # ("embed", "mlp") but 64 < 128: T5X's 2-D fallback keeps it whole
        "stacked": (2, 128, 160),  # ("layers", "embed", "mlp"): factored within each layer
    }
    axes = {
        "prompt": ("prompt", "prompt_embed"),
        "wi": ("embed", "mlp"),
        "small": ("embed", "mlp"),
        "stacked": ("layers", "embed", "mlp"),
    }
    params = {k: jnp.asarray(rng.normal(size=v), jnp.float32) for k, v in shapes.items()}
    grads = {k: jnp.asarray(rng.normal(size=v), jnp.float32) for k, v in shapes.items()}
    tx = optimizers.adafactor().with_param_axes(axes)
    new, stats = _one_step(tx, params, grads)
    assert stats.v["prompt"].shape == (150, 256) and stats.v_row["prompt"].shape == (1,)
    p, g = (np.asarray(t["prompt"]) for t in (params, grads))
    np.testing.assert_allclose(new["prompt"], _adafactor_reference(p, [g]), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(stats.v["prompt"], g.astype(np.float64) ** 2 + 1e-30, rtol=1e-6)
    for name, rows, cols in [("wi", (0,), (1,)), ("stacked", (1,), (2,))]:
        p, g = (np.asarray(t[name]) for t in (params, grads))
        want, v_row, v_col = _factored_reference(p, g, rows, cols)
        assert stats.v[name].shape == (1,)
        np.testing.assert_allclose(stats.v_row[name], v_row, rtol=1e-5)
        np.testing.assert_allclose(stats.v_col[name], v_col, rtol=1e-5)
        np.testing.assert_allclose(new[name], want, rtol=1e-4, atol=1e-6)
    assert stats.v_row["stacked"].shape == (2, 128) and stats.v_col["stacked"].shape == (2, 160)
    assert stats.v["small"].shape == (64, 384)
    # Without axes (an optimizer used outside the trainer) the size heuristic factors the prompt.
    _, heuristic = _one_step(optimizers.adafactor(), params["prompt"], grads["prompt"])
    assert heuristic.v_row.shape == (150,) and heuristic.v_col.shape == (256,)


def test_factor_rules_of_the_model_and_their_errors():
    model = PromptModel(EncoderDecoder(t5_config.tiny(), prompt=prompts.InstancePrompt(3, 4)))
    axes = model.param_logical_axes()
    assert axes["encoder/prompt/prompt"] == ("prompt", "prompt_embed")
    assert axes["encoder/prompt/generator/up_kernel"] == ("prompt_hidden", "prompt", "prompt_embed")
    assert axes["token_embedder/embedding"] == ("vocab", "embed")
    assert (
        factoring.factor_dims(axes["encoder/prompt/generator/up_kernel"], (128, 128, 128)) is None
    )
    assert factoring.factor_dims(("vocab", "embed"), (32128, 768)) == ((1,), (0,))
    assert factoring.factor_dims(("heads", "relpos_buckets"), (12, 32)) is None
    with pytest.raises(ValueError, match="axis 'experts'.*FACTOR_RULES"):
        factoring.factor_dims(("experts", "embed"), (8, 128), path="moe/kernel")
    with pytest.raises(ValueError, match="Incomplete"):
        factoring.factor_dims(("embed", "mlp", "relpos_buckets"), (128, 128, 4))
    with pytest.raises(ValueError, match="none for other/param"):
        optimizers.adafactor().with_param_axes(axes).init({"other": {"param": jnp.zeros((2, 2))}})


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
