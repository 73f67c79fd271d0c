"""`T5XEncoderDecoder`: our prompted network behind T5X's module interface.

Without T5X: the wrapper's parameters and `params_axes` are the network's, its logits equal the
network's, and decoding one token at a time from a cache created on a dummy input (as T5X's
`_compute_kv_cache` does) equals teacher forcing. With T5X (`PYTHONPATH=/work/t5x_site`, see the
README): T5X's `EncoderDecoderModel` gives the loss, scores and decodes of our own model on the
same batch, and one T5X Adafactor step from a pretrained step equals one step of our trainer.
"""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.t5 import checkpoints as t5_checkpoints
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import decoding, network
from prompt_tuning.t5x import network as t5x_network
from prompt_tuning.t5x import optim as t5x_optim
from prompt_tuning.train import optimizers, trainer
from prompt_tuning.train.model import PromptModel

HAS_T5X = importlib.util.find_spec("t5x") is not None
needs_t5x = pytest.mark.skipif(not HAS_T5X, reason="T5X is not installed (see the README)")
TINY = pathlib.Path(__file__).resolve().parents[1] / "prompt_tuning" / "pretrained" / "t5_tiny"
B, T, S = 2, 8, 5


def _network(prompt_length: int = 3) -> network.EncoderDecoder:
    config = t5_config.tiny(vocab_size=512, dropout_rate=0.0)
    return network.EncoderDecoder(config, prompt=prompts.Prompt(length=prompt_length))


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, 512, (B, T)).astype(np.int32)
    inputs[0, 5:] = 0  # padding
    targets = rng.integers(3, 512, (B, S)).astype(np.int32)
    targets[1, 3:] = 0
    decoder_inputs = np.concatenate([np.zeros((B, 1), np.int32), targets[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }


@pytest.fixture(scope="module")
def wrapped():
    """The wrapper and its variables, initialized as T5X does (float dummy tokens)."""
    module = t5x_network.T5XEncoderDecoder(_network())
    ones = lambda shape: jnp.ones(shape, jnp.float32)  # noqa: E731
    variables = module.init(
        jax.random.key(0), ones((B, T)), ones((B, S)), ones((B, S)), enable_dropout=False
    )
    return module, variables


def test_params_and_axes_are_the_networks(wrapped):
    _, variables = wrapped
    assert set(variables) == {"params", "params_axes"}
    boxed = PromptModel(_network()).init_boxed(jax.random.key(1), T, S)
    flat = t5_checkpoints.flatten(variables["params"])
    assert set(flat) == set(t5_checkpoints.flatten(boxed))
    assert all(isinstance(leaf, jax.Array) for leaf in flat.values())  # unboxed, as T5X needs
    axes = t5_checkpoints.flatten(variables["params_axes"])
    assert set(axes) == {f"{name}_axes" for name in flat}
    assert axes["encoder/prompt/prompt_axes"].names == ("prompt", "prompt_embed")
    assert axes["token_embedder/embedding_axes"].names == ("vocab", "embed")
    for name, leaf in t5_checkpoints.flatten(boxed).items():
        assert axes[f"{name}_axes"].names == tuple(leaf.names), name


def test_logits_equal_the_networks(wrapped):
    module, variables = wrapped
    batch = _batch()
    params = variables["params"]
    got = module.apply({"params": params}, **_tokens(batch), enable_dropout=False)
    want = PromptModel(_network()).logits(params, batch)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _tokens(batch):
    keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    return {k: batch[k] for k in keys}


def test_cached_decoding_from_a_dummy_cache_equals_teacher_forcing(wrapped):
    module, variables = wrapped
    batch, params = _batch(1), {"params": variables["params"]}
    forced = module.apply(params, **_tokens(batch), enable_dropout=False)  # [B, S, V]
    # T5X's `_compute_kv_cache`: the cache comes from all-ones dummy inputs.
    _, state = module.apply(
        params,
        **{k: jnp.ones_like(v) for k, v in _tokens(batch).items()},
        decode=True,
        enable_dropout=False,
        mutable=["cache"],
    )
    cache = state["cache"]
    flat = t5_checkpoints.flatten(cache)
    assert int(flat.pop("decoder/cache_index")) == 0
    assert not any("encoder_decoder_attention" in name for name in flat)
    assert all(leaf.shape[:2] == (B, S) for leaf in flat.values())  # beam-expandable
    encoded = module.apply(
        params, batch["encoder_input_tokens"], enable_dropout=False, method="encode"
    )
    for i in range(S):
        tokens = batch["decoder_input_tokens"][:, i : i + 1]
        logits, state = module.apply(
            {**params, "cache": cache}, encoded, batch["encoder_input_tokens"], tokens, tokens,
            enable_dropout=False, decode=True, method="decode", mutable=["cache"],
        )  # fmt: skip
        cache = state["cache"]
        valid = batch["decoder_target_tokens"][:, i] > 0  # padded positions differ: masked
        np.testing.assert_allclose(logits[valid, 0], forced[valid, i], atol=1e-5)
    assert int(cache["decoder"]["cache_index"]) == S


def test_a_mixed_precision_network_behind_the_wrapper(wrapped):
    """ACTIVATION_DTYPE = "bfloat16" with bfloat16 frozen weights (FROZEN_DTYPE): float32 logits
    equal to the network's; cached decoding equals teacher forcing within bfloat16 rounding."""
    from prompt_tuning.t5 import precision  # noqa: PLC0415

    net = _network()
    net = network.EncoderDecoder(net.config.replace(dtype="bfloat16"), prompt=net.prompt)
    module = t5x_network.T5XEncoderDecoder(net)
    params = precision.cast_matmul_weights(wrapped[1]["params"], jnp.bfloat16)
    assert params["encoder"]["prompt"]["prompt"].dtype == jnp.float32  # prompts are not cast
    batch = _batch(2)
    forced = module.apply({"params": params}, **_tokens(batch), enable_dropout=False)
    assert forced.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(forced), PromptModel(net).logits(params, batch))
    _, state = module.apply(
        {"params": params},
        **{k: jnp.ones_like(v) for k, v in _tokens(batch).items()},
        decode=True,
        enable_dropout=False,
        mutable=["cache"],
    )
    cache = state["cache"]
    encoded = module.apply(
        {"params": params}, batch["encoder_input_tokens"], enable_dropout=False, method="encode"
    )
    scale = float(np.sqrt(np.mean(np.square(forced))))
    for i in range(S):
        tokens = batch["decoder_input_tokens"][:, i : i + 1]
        logits, state = module.apply(
            {"params": params, "cache": cache}, encoded, batch["encoder_input_tokens"], tokens,
            tokens, enable_dropout=False, decode=True, method="decode", mutable=["cache"],
        )  # fmt: skip
        cache = state["cache"]
        valid = batch["decoder_target_tokens"][:, i] > 0
        # Matmuls of other shapes may round bfloat16 hidden states differently: allow 4 units of
        # bfloat16 rounding (2^-9) of the logits' RMS. Measured on XLA:CPU: 0 (bit-identical) for
        # batches of seeds 2-7; the logits of adjacent positions differ by over 1,000 units.
        np.testing.assert_allclose(logits[valid, 0], forced[valid, i], atol=4 * 2**-9 * scale)


def test_packed_batches_are_refused(wrapped):
    module, variables = wrapped
    batch = _tokens(_batch())
    segments = np.ones((B, T), np.int32)
    with pytest.raises(ValueError, match=r"encoder_segment_ids.*pack = False"):
        module.apply(variables, **batch, encoder_segment_ids=segments, enable_dropout=False)


def test_trainable_filter_and_prompt_rules():
    keep = t5x_optim.trainable_filter()
    assert keep("/encoder/prompt/prompt", None) and not keep("/encoder/layers_0/mlp/wo", None)
    assert t5x_optim.trainable_filter("^decoder/")("/decoder/decoder_norm/scale", None)
    assert dict(t5x_optim.logical_axis_rules()) == dict.fromkeys(prompts.PROMPT_LOGICAL_AXES)


# ----------------------------------------------------------------------------------------------
# Under T5X's EncoderDecoderModel.


def _t5x_model(module: nn.Module):
    import seqio  # noqa: PLC0415
    from flax import traverse_util  # noqa: PLC0415
    from t5x import adafactor, models  # noqa: PLC0415
    from t5x import optimizers as t5x_optimizers  # noqa: PLC0415

    traversal = traverse_util.ModelParamTraversal(filter_fn=t5x_optim.trainable_filter())
    adafactor_def = adafactor.Adafactor(
        decay_rate=0.8, step_offset=0, multiply_by_parameter_scale=False,
        weight_decay_rate=1e-5, clipping_threshold=1.0, factored=False,
        logical_factor_rules=t5x_optim.factor_rules(),
    )  # fmt: skip
    vocabulary = seqio.PassThroughVocabulary(512)
    return models.EncoderDecoderModel(
        t5x_network.T5XEncoderDecoder(module), vocabulary, vocabulary,
        t5x_optimizers.MultiOptimizer(((traversal, adafactor_def),)), z_loss=1e-4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pretrained():
    """The embedded tiny T5 (checkpoint at step 2,500) with a 4-token prompt."""
    config, frozen = t5_checkpoints.load_checkpoint(TINY / "checkpoint_2500")
    module = network.EncoderDecoder(config, prompt=prompts.Prompt(length=4))
    boxed = PromptModel(module).init_boxed(jax.random.key(2), T, S)
    trainable, _ = optimizers.split_params(nn.unbox(boxed))
    return module, optimizers.merge_params(trainable, frozen)


@needs_t5x
def test_t5x_loss_scores_and_decodes_equal_ours(pretrained):
    module, params = pretrained
    model, ours, batch = _t5x_model(module), PromptModel(module, z_loss=1e-4), _batch(2)
    loss, metrics = model.loss_fn(params, batch, None)
    want, aux = ours.loss_fn(params, batch, None)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["z_loss"].compute()), float(aux["z_loss"]), rtol=1e-5)
    np.testing.assert_allclose(
        model.score_batch(params, batch), ours.score_batch(params, batch), rtol=1e-5
    )
    greedy, _ = model.predict_batch_with_aux(params, batch, num_decodes=1)
    np.testing.assert_array_equal(
        greedy, decoding.greedy_decode(module, params, batch["encoder_input_tokens"], S)
    )
    # T5X's beam search runs on the same logits (`decode=True` cache); it keeps a beam that
    # reaches the maximum length unfinished only when no beam finished, so its top beams can
    # differ from `decoding.beam_search`'s.
    beams, scores = model.predict_batch_with_aux(params, batch, num_decodes=3)
    assert beams.shape == (B, S) and np.all(np.isfinite(scores["scores"]))


@needs_t5x
def test_one_t5x_step_from_a_pretrained_step_equals_our_trainers(pretrained):
    from t5x import train_state as t5x_train_state  # noqa: PLC0415

    module, params = pretrained
    model, batch = _t5x_model(module), _batch(3)
    variables = model.get_initial_variables(
        jax.random.key(0), {k: v.shape for k, v in _tokens(batch).items()},
        {k: jnp.int32 for k in _tokens(batch)},
    )  # fmt: skip
    state = t5x_train_state.FlaxOptimTrainState.create(model.optimizer_def, variables)
    state = state.replace_params(params).replace_step(jnp.asarray(2500, jnp.int32))
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(state.params, batch, None)
    t5x_state = state.apply_gradient(grads, learning_rate=0.3)
    trainable, frozen = optimizers.split_params(params)
    optimizer = optimizers.adafactor()
    ours = trainer.TrainState(
        jnp.asarray(2500, jnp.int32), trainable,
        optimizers.start_at_step(optimizer.init(trainable), 2500),
    )  # fmt: skip
    ours, metrics = trainer.train_step(
        ours, frozen, batch, jax.random.key(0), model=PromptModel(module, z_loss=1e-4),
        optimizer=optimizer,
    )  # fmt: skip
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(
        ours.params["encoder"]["prompt"]["prompt"],
        t5x_state.params["encoder"]["prompt"]["prompt"], atol=1e-5,
    )  # fmt: skip
    # Only the prompt moved, and only it has optimizer state.
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, dict(t5x_state.params))
    assert {n for n, m in t5_checkpoints.flatten(moved).items() if m} == {"encoder/prompt/prompt"}
    states = t5_checkpoints.flatten(dict(t5x_state.param_states))
    assert {n for n, s in states.items() if s is not None} == {"encoder/prompt/prompt"}
