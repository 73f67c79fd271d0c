"""Prompt modules inside the tiny frozen T5: gradients, padding masks and decoder attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import prompts
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network

CONFIG = t5_config.tiny(num_decoder_layers=1)  # H = 32, 2 encoder layers, V = 128
LAYERS = CONFIG.num_encoder_layers
INPUTS = np.array([[12, 7, 44, 9, 1], [30, 5, 1, 0, 0]], np.int32)  # second example padded
TARGETS = np.array([[4, 8, 1], [6, 1, 0]], np.int32)
TASK_IDS = np.array([1, 0], np.int32)

MODULES = {
    "idpg_encoder": prompts.InstancePrompt(2, hidden_dim=4, sentence_encoder="encoder"),
    "m_idpg_phm_previous": prompts.InstancePrompt(
        2, hidden_dim=4, layer="phm", phm_rank=4, multi_layer=True, num_layers=LAYERS,
        layer_input="previous",
    ),
    "m_idpg_first": prompts.InstancePrompt(
        2, hidden_dim=4, multi_layer=True, num_layers=LAYERS, sharing="L", layer_input="first"
    ),
}  # fmt: skip


def _shift_right(targets):
    return np.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def _setup(name):
    model = network.EncoderDecoder(CONFIG, prompt=MODULES[name])
    batch = (INPUTS, _shift_right(TARGETS), TARGETS, TASK_IDS)
    params = nn.unbox(model.init(jax.random.key(0), *map(jnp.asarray, batch))["params"])
    return model, params, batch


def _apply(model, params, *inputs):
    """Teacher-forced logits [B, S, V] without dropout (eager: op compilations are shared)."""
    return model.apply({"params": params}, *map(jnp.asarray, inputs), enable_dropout=False)


def _loss(model, params, batch):
    logits = model.apply({"params": params}, *map(jnp.asarray, batch), enable_dropout=False)
    targets = jnp.asarray(batch[2])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * (targets > 0))


# The two special uses of the hook: `needs_encoder_output` and `per_layer` (both also prepend a
# layer-0 prompt). The other modules differ only inside the prompt module, where
# prompts_sharding_test checks that every parameter gets a gradient.
@pytest.mark.parametrize("name", ["idpg_encoder", "m_idpg_phm_previous"])
def test_gradients_reach_prompt_and_match_with_frozen_params_detached(name):
    model, params, batch = _setup(name)

    def prompt_only(trainable, frozen):
        frozen = jax.lax.stop_gradient(frozen)
        merged = {**frozen, "encoder": {**frozen["encoder"], "prompt": trainable}}
        return _loss(model, merged, batch)

    def both(params):
        full = jax.grad(lambda p: _loss(model, p, batch))(params)
        return full, jax.grad(prompt_only)(params["encoder"]["prompt"], params)

    full_grads, prompt_grads = both(params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        full_grads["encoder"]["prompt"],
        prompt_grads,
    )
    norms = {
        jax.tree_util.keystr(path): float(jnp.linalg.norm(g))
        for path, g in jax.tree_util.tree_leaves_with_path(prompt_grads)
    }
    assert all(norm > 0 for norm in norms.values()), norms


@pytest.mark.parametrize("name", ["idpg_encoder", "m_idpg_phm_previous"])
def test_padded_batch_equals_unpadded_examples(name):
    model, params, batch = _setup(name)
    logits = _apply(model, params, *batch)
    for i in range(len(INPUTS)):
        inputs = INPUTS[i : i + 1, : int((INPUTS[i] > 0).sum())]
        targets = TARGETS[i : i + 1, : int((TARGETS[i] > 0).sum())]
        alone = _apply(model, params, inputs, _shift_right(targets), targets, TASK_IDS[i : i + 1])
        np.testing.assert_allclose(logits[i, : targets.shape[1]], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["m_idpg_first"])
def test_decoder_attends_to_prompt_positions(name):
    model, params, batch = _setup(name)
    variables = {"params": params}
    encoded, mask = model.apply(variables, jnp.asarray(INPUTS), method=model.encode)
    length = MODULES[name].length
    assert encoded.shape == (2, length + INPUTS.shape[1], CONFIG.emb_dim)
    assert bool(mask[:, :length].all())  # prompt positions are visible to the decoder

    def decode(states):
        return model.apply(
            variables, states, mask, jnp.asarray(batch[1]), jnp.asarray(batch[2]),
            method=model.decode,
        )  # fmt: skip

    base = decode(encoded)
    changed = decode(encoded.at[:, :length].add(1.0))  # perturb only the prompt positions
    assert float(jnp.abs(changed - base).max()) > 1e-3


def test_per_layer_prompts_take_the_encoder_layer_count_from_the_model():
    # DeepPrompt(length) and M-IDPG need L; inside the model it comes from the T5 config.
    inputs = (INPUTS, _shift_right(TARGETS), TARGETS)
    for module in (
        prompts.DeepPrompt(2),
        prompts.InstancePrompt(2, hidden_dim=4, multi_layer=True, sharing="M"),
    ):
        model = network.EncoderDecoder(CONFIG, prompt=module)
        shapes = jax.eval_shape(model.init, jax.random.key(0), *map(jnp.asarray, inputs))
        table = nn.unbox(shapes["params"])["encoder"]["prompt"]["prompt"]
        assert table.shape == (LAYERS, 2, CONFIG.emb_dim), type(module).__name__
    with pytest.raises(ValueError, match="num_layers"):  # alone, L is unknown
        prompts.DeepPrompt(2).init(jax.random.key(0), jnp.asarray(INPUTS), jnp.zeros((2, 5, 8)))
    wrong = network.EncoderDecoder(CONFIG, prompt=prompts.DeepPrompt(2, num_layers=LAYERS + 1))
    with pytest.raises(ValueError, match=f"encoder has {LAYERS} layers"):
        wrong.init(jax.random.key(0), *map(jnp.asarray, inputs))
