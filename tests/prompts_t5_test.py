"""Prompt modules inside the tiny frozen T5 against transformers' T5 (logits, prompt gradient),
and their gradients, padding masks and decoder attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from prompt_tuning import prompts
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from tests import t5_network_test

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


def test_prompted_logits_and_prompt_gradient_equal_transformers_with_inputs_embeds():
    # The reference: transformers' T5 with the same weights, fed inputs_embeds = [prompt; embedded]
    # and the mask [1..1; tokens > 0]. Its relative positions run over the P + T sequence, so this
    # also pins where the prompt sits for the position buckets.
    hf_model, weights = t5_network_test.hf_model_and_params(CONFIG, seed=1)
    length = 4
    prompt = np.random.default_rng(0).normal(size=(length, CONFIG.emb_dim)).astype(np.float32)
    model = network.EncoderDecoder(CONFIG, prompt=prompts.Prompt(length))
    decoder_inputs = _shift_right(TARGETS)

    def loss(prompt_value):
        full = dict(weights, encoder=dict(weights["encoder"], prompt={"prompt": prompt_value}))
        logits = _apply(model, full, INPUTS, decoder_inputs, TARGETS)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(TARGETS))
        return jnp.sum(losses * (TARGETS > 0)), logits

    (_, logits), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(prompt))

    torch_prompt = torch.tensor(prompt, requires_grad=True)
    ids = torch.tensor(INPUTS)
    embedded = hf_model.shared(ids)  # [B, T, H]
    inputs_embeds = torch.cat([torch_prompt[None].expand(len(INPUTS), -1, -1), embedded], dim=1)
    mask = torch.cat([torch.ones(len(INPUTS), length, dtype=torch.long), (ids > 0).long()], dim=1)
    out = hf_model(
        inputs_embeds=inputs_embeds,
        attention_mask=mask,
        decoder_input_ids=torch.tensor(decoder_inputs),
    )
    targets = torch.tensor(TARGETS).reshape(-1).long()
    token_losses = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, CONFIG.vocab_size), targets, reduction="none"
    )
    (token_losses * (targets > 0)).sum().backward()
    real = TARGETS > 0  # T5X masks decoder positions after the targets; transformers does not
    hf_logits = out.logits.detach().numpy()
    np.testing.assert_allclose(logits[real], hf_logits[real], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad, torch_prompt.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert float(np.abs(torch_prompt.grad.numpy()).max()) > 1e-3  # a gradient worth comparing


# The two special uses of the hook: `needs_encoder_output` and `per_layer` (both also prepend a
# layer-0 prompt). The other modules differ only inside the prompt module, where
# prompts_sharding_test checks that every parameter gets a gradient.
@pytest.mark.parametrize("name", ["idpg_encoder", "m_idpg_phm_previous"])
def test_gradients_reach_every_prompt_parameter_inside_t5(name):
    model, params, batch = _setup(name)

    def prompt_loss(trainable):
        return _loss(
            model, {**params, "encoder": {**params["encoder"], "prompt": trainable}}, batch
        )

    grads = jax.grad(prompt_loss)(params["encoder"]["prompt"])
    norms = {
        jax.tree_util.keystr(path): float(jnp.linalg.norm(g))
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
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
