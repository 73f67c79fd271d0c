"""Tests of the frozen T5 network against transformers' T5 and hand-checked invariants."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import layers, network

# A padded batch: examples of different lengths (0 = padding); targets end in EOS (1).
ENCODER_TOKENS = np.array([[5, 9, 17, 33, 2, 1], [7, 21, 1, 0, 0, 0], [44, 3, 8, 1, 0, 0]])
TARGET_TOKENS = np.array([[11, 12, 1, 0], [13, 1, 0, 0], [14, 15, 16, 1]])


def shift_right(targets: np.ndarray) -> np.ndarray:
    """Decoder inputs: targets shifted right with 0 as the start token (T5X convention)."""
    return np.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def hf_config(config: t5_config.T5Config):
    """The transformers T5Config describing the same architecture as `config`."""
    gated = tuple(config.mlp_activations) == ("gelu", "linear")
    return transformers.T5Config(
        vocab_size=config.vocab_size,
        d_model=config.emb_dim,
        d_kv=config.head_dim,
        d_ff=config.mlp_dim,
        num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        dropout_rate=0.0,
        layer_norm_epsilon=config.layer_norm_epsilon,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=config.logits_via_embedding,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def hf_to_flax(state: dict, config: t5_config.T5Config) -> dict:
    """Maps a transformers T5 state dict onto this project's parameter tree (test-only)."""
    w = {k: v.detach().numpy().astype(np.float32) for k, v in state.items()}
    dense = lambda key: {"kernel": w[key].T}  # torch [out, in] -> ours [in, out]
    norm = lambda key: {"scale": w[key]}

    def attention(prefix):
        names = {"query": "q", "key": "k", "value": "v", "out": "o"}
        return {ours: dense(f"{prefix}.{theirs}.weight") for ours, theirs in names.items()}

    def mlp(prefix):
        if len(config.mlp_activations) == 1:
            return {"wi": dense(f"{prefix}.wi.weight"), "wo": dense(f"{prefix}.wo.weight")}
        names = ("wi_0", "wi_1", "wo")
        return {name: dense(f"{prefix}.{name}.weight") for name in names}

    encoder = {}
    for i in range(config.num_encoder_layers):
        p = f"encoder.block.{i}.layer"
        encoder[f"layers_{i}"] = {
            "pre_attention_layer_norm": norm(f"{p}.0.layer_norm.weight"),
            "attention": attention(f"{p}.0.SelfAttention"),
            "pre_mlp_layer_norm": norm(f"{p}.1.layer_norm.weight"),
            "mlp": mlp(f"{p}.1.DenseReluDense"),
        }
    encoder["encoder_norm"] = norm("encoder.final_layer_norm.weight")
    bias_key = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    encoder["relpos_bias"] = {
        "rel_embedding": w[f"encoder.{bias_key}"].T
    }  # [buckets, N] -> [N, buckets]
    decoder = {}
    for i in range(config.num_decoder_layers):
        p = f"decoder.block.{i}.layer"
        decoder[f"layers_{i}"] = {
            "pre_self_attention_layer_norm": norm(f"{p}.0.layer_norm.weight"),
            "self_attention": attention(f"{p}.0.SelfAttention"),
            "pre_cross_attention_layer_norm": norm(f"{p}.1.layer_norm.weight"),
            "encoder_decoder_attention": attention(f"{p}.1.EncDecAttention"),
            "pre_mlp_layer_norm": norm(f"{p}.2.layer_norm.weight"),
            "mlp": mlp(f"{p}.2.DenseReluDense"),
        }
    decoder["decoder_norm"] = norm("decoder.final_layer_norm.weight")
    decoder["relpos_bias"] = {"rel_embedding": w[f"decoder.{bias_key}"].T}
    if not config.logits_via_embedding:
        decoder["logits_dense"] = dense("lm_head.weight")
    return {
        "token_embedder": {"embedding": w["shared.weight"]},
        "encoder": encoder,
        "decoder": decoder,
    }


def hf_model_and_params(config: t5_config.T5Config, seed: int = 0):
    """A randomly initialised transformers T5 and the same weights in our tree."""
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(hf_config(config)).eval()
    return model, hf_to_flax(model.state_dict(), config)


def hf_logits(model, encoder_tokens: np.ndarray, target_tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(encoder_tokens),
            attention_mask=torch.tensor(encoder_tokens > 0),
            decoder_input_ids=torch.tensor(shift_right(target_tokens)),
        )
    return out.logits.numpy()


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets", [(32, 128), (64, 256)])  # T5's; a wider table
@pytest.mark.parametrize("array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_relative_position_bucket_matches_transformers(bidirectional, buckets, array):
    # Every distance a 4,096-token sequence has: the float32 log's rounding must put each one in
    # transformers' bucket, whether NumPy (static positions) or XLA (traced ones) computes it.
    relative = np.arange(-4096, 4097)
    num_buckets, max_distance = buckets
    expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(relative),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    ).numpy()
    actual = layers.relative_position_bucket(array(relative), bidirectional, *buckets)
    assert isinstance(actual, np.ndarray) == (array is np.asarray)
    np.testing.assert_array_equal(np.asarray(actual), expected)


@pytest.mark.parametrize(
    "config",
    [
        t5_config.tiny(),  # T5 1.1: gated GELU, untied logits_dense.
        t5_config.tiny(mlp_activations=("relu",), logits_via_embedding=True),  # Original T5.
    ],
    ids=["t5_1_1", "t5_original"],
)
def test_logits_match_transformers_on_padded_batch(config):
    hf_model, params = hf_model_and_params(config)
    expected = hf_logits(hf_model, ENCODER_TOKENS, TARGET_TOKENS)
    model = network.EncoderDecoder(config)
    actual = model.apply(
        {"params": params},
        jnp.asarray(ENCODER_TOKENS),
        jnp.asarray(shift_right(TARGET_TOKENS)),
        jnp.asarray(TARGET_TOKENS),
        enable_dropout=False,
    )
    assert actual.dtype == jnp.float32
    real = TARGET_TOKENS > 0
    assert np.abs(expected[real]).max() > 1.0  # The comparison is not between near-zero values.
    np.testing.assert_allclose(np.asarray(actual)[real], expected[real], atol=1e-4, rtol=1e-4)


def _shapes(tree):
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)


def test_init_declares_design_names_shapes_and_logical_axes():
    config = t5_config.tiny()
    model = network.EncoderDecoder(config)
    tokens = jnp.ones((2, 5), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, tokens))
    boxed = variables["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    shapes = _shapes(nn.unbox(boxed))
    h, nk, f, v = 32, 32, 64, 128
    assert shapes["token_embedder"] == {"embedding": (v, h)}
    enc = shapes["encoder"]["layers_1"]
    assert enc["attention"]["query"]["kernel"] == (h, nk)
    assert enc["attention"]["out"]["kernel"] == (nk, h)
    assert enc["mlp"] == {
        "wi_0": {"kernel": (h, f)},
        "wi_1": {"kernel": (h, f)},
        "wo": {"kernel": (f, h)},
    }
    assert shapes["encoder"]["relpos_bias"]["rel_embedding"] == (4, 32)
    dec = shapes["decoder"]
    assert set(dec["layers_0"]) == {
        "pre_self_attention_layer_norm",
        "self_attention",
        "pre_cross_attention_layer_norm",
        "encoder_decoder_attention",
        "pre_mlp_layer_norm",
        "mlp",
    }
    assert dec["logits_dense"]["kernel"] == (h, v)
    axes = nn.get_partition_spec(boxed)
    assert tuple(axes["token_embedder"]["embedding"]) == ("vocab", "embed")
    assert tuple(axes["encoder"]["layers_0"]["attention"]["key"]["kernel"]) == (
        "embed",
        "joined_kv",
    )
    assert tuple(axes["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
    assert tuple(axes["decoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
    assert tuple(axes["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")


def test_original_t5_is_tied_with_relu_mlp():
    config = t5_config.tiny(mlp_activations=("relu",), logits_via_embedding=True)
    tokens = jnp.ones((1, 3), jnp.int32)
    variables = jax.eval_shape(
        lambda: network.EncoderDecoder(config).init(jax.random.key(0), tokens, tokens, tokens)
    )
    shapes = _shapes(nn.unbox(variables["params"]))
    assert "logits_dense" not in shapes["decoder"]
    assert set(shapes["decoder"]["layers_0"]["mlp"]) == {"wi", "wo"}


class DummyPrompt(nn.Module):
    """A Lester-style prompt `[P, H]` broadcast over the batch (test-only)."""

    length: int = 3

    @nn.compact
    def __call__(self, input_tokens, embedded_inputs, task_ids):
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("prompt", "prompt_embed"))
        prompt = self.param("prompt", init, (self.length, embedded_inputs.shape[-1]))
        return jnp.broadcast_to(prompt, (embedded_inputs.shape[0],) + prompt.shape)  # [B, P, H]


def random_params(model, *args, seed: int = 0, **kwargs) -> dict:
    """Random float32 params of `model` (shapes from `jax.eval_shape`; compiling `init` is slow).

    Kernels are normal / sqrt(fan_in), norm scales near one, other tables standard normal.
    """
    shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        x = rng.standard_normal(leaf.shape)
        if path[-1].key == "kernel":
            x = x / np.sqrt(leaf.shape[0])
        elif path[-1].key == "scale":
            x = 1.0 + 0.1 * x
        return jnp.asarray(x, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def _init(model, batch=ENCODER_TOKENS, targets=TARGET_TOKENS):
    return random_params(
        model, jnp.asarray(batch), jnp.asarray(shift_right(targets)), jnp.asarray(targets)
    )


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, encoder_tokens, decoder_inputs, targets):
    return model.apply(
        {"params": params}, encoder_tokens, decoder_inputs, targets, enable_dropout=False
    )


def _logits(model, params, encoder_tokens, targets):
    encoder_tokens, targets = np.asarray(encoder_tokens), np.asarray(targets)
    return np.asarray(_apply(model, params, encoder_tokens, shift_right(targets), targets))


def test_prompt_params_live_under_encoder_and_padding_is_masked():
    model = network.EncoderDecoder(t5_config.tiny(), prompt=DummyPrompt())
    params = _init(model)
    assert params["encoder"]["prompt"]["prompt"].shape == (3, 32)
    assert "prompt" not in params
    batched = _logits(model, params, ENCODER_TOKENS, TARGET_TOKENS)
    for i in range(len(ENCODER_TOKENS)):
        enc = ENCODER_TOKENS[i : i + 1, : (ENCODER_TOKENS[i] > 0).sum()]
        tgt = TARGET_TOKENS[i : i + 1, : (TARGET_TOKENS[i] > 0).sum()]
        single = _logits(model, params, enc, tgt)
        np.testing.assert_allclose(batched[i, : tgt.shape[1]], single[0], atol=1e-5, rtol=1e-5)
    encoded, mask = model.apply({"params": params}, jnp.asarray(ENCODER_TOKENS), method="encode")
    assert encoded.shape == (3, 3 + 6, 32)
    np.testing.assert_array_equal(mask[:, :3], True)
    np.testing.assert_array_equal(mask[:, 3:], ENCODER_TOKENS > 0)


def test_changing_the_prompt_changes_the_logits():
    model = network.EncoderDecoder(t5_config.tiny(), prompt=DummyPrompt())
    params = _init(model)
    before = _logits(model, params, ENCODER_TOKENS, TARGET_TOKENS)
    changed = jax.tree_util.tree_map(lambda x: x, params)
    changed["encoder"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"] + 1.0
    after = _logits(model, changed, ENCODER_TOKENS, TARGET_TOKENS)
    assert np.abs(after - before).max() > 1e-3


class PerLayerPrompt(nn.Module):
    """A deep prompt: `layer_prompt` returns `hidden[:, :P] + shift` and sows the layer index."""

    shift: float = 0.0
    per_layer = True

    @nn.compact
    def __call__(self, input_tokens, embedded_inputs, task_ids):
        return DummyPrompt(name="base")(input_tokens, embedded_inputs, task_ids)

    def layer_prompt(self, layer_index, input_tokens, hidden, task_ids):
        self.sow("intermediates", "layers", layer_index)
        return hidden[:, :3] + self.shift


def test_per_layer_prompt_replaces_the_prompt_positions_before_layers_after_the_first():
    config = t5_config.tiny(num_encoder_layers=3)
    identity = network.EncoderDecoder(config, prompt=PerLayerPrompt(0.0))
    params = _init(identity)
    tokens = jnp.asarray(ENCODER_TOKENS)
    _, state = identity.apply(
        {"params": params}, tokens, method="encode", mutable=["intermediates"]
    )
    assert state["intermediates"]["encoder"]["prompt"]["layers"] == (1, 2)
    plain = network.EncoderDecoder(config, prompt=DummyPrompt())
    plain_params = dict(
        params, encoder=dict(params["encoder"], prompt=params["encoder"]["prompt"]["base"])
    )
    expected = _logits(plain, plain_params, ENCODER_TOKENS, TARGET_TOKENS)
    np.testing.assert_allclose(
        _logits(identity, params, ENCODER_TOKENS, TARGET_TOKENS), expected, atol=1e-5, rtol=1e-5
    )
    shifted = network.EncoderDecoder(config, prompt=PerLayerPrompt(0.5))
    assert np.abs(_logits(shifted, params, ENCODER_TOKENS, TARGET_TOKENS) - expected).max() > 1e-3


class EncoderOutputPrompt(nn.Module):
    """Uses the frozen encoder output (mean-pooled) as a one-token prompt and records it."""

    needs_encoder_output = True

    @nn.compact
    def __call__(self, input_tokens, embedded_inputs, task_ids, encoder_output=None):
        self.sow("intermediates", "encoder_output", encoder_output)
        scale = self.param("scale", nn.initializers.ones, (1,))
        prompt = (encoder_output.mean(axis=1, keepdims=True) * scale).astype(embedded_inputs.dtype)
        self.sow("intermediates", "output", prompt)
        return prompt  # [B, 1, H]


def test_needs_encoder_output_gets_the_frozen_encoder_without_prompt():
    config = t5_config.tiny()
    model = network.EncoderDecoder(config, prompt=EncoderOutputPrompt())
    params = _init(model)
    tokens = jnp.asarray(ENCODER_TOKENS)
    (_, _), state = model.apply(
        {"params": params}, tokens, method="encode", mutable=["intermediates"]
    )
    seen = state["intermediates"]["encoder"]["prompt"]["encoder_output"][0]
    frozen_params = dict(
        params, encoder={k: v for k, v in params["encoder"].items() if k != "prompt"}
    )
    expected, _ = network.EncoderDecoder(config).apply(
        {"params": frozen_params}, tokens, method="encode"
    )
    np.testing.assert_allclose(seen, expected, atol=1e-6)

    def prompt_output(p):  # Gradients reach the prompt's own parameters only.
        _, state = model.apply({"params": p}, tokens, method="encode", mutable=["intermediates"])
        return state["intermediates"]["encoder"]["prompt"]["output"][0].sum()

    grads = jax.jit(jax.grad(prompt_output))(params)
    assert np.abs(grads["encoder"]["prompt"]["scale"]).max() > 0
    frozen_grads = [grads["token_embedder"], grads["encoder"]["layers_0"]]
    assert all(np.all(g == 0) for g in jax.tree.leaves(frozen_grads))


def test_frozen_encoder_pass_for_the_prompt_has_no_dropout():
    # IDPG's frozen sentence encoder is a fixed function of the input (cacheable): training-mode
    # dropout applies to the prompted pass only, not to the encoder output the prompt is fed.
    config = t5_config.tiny(dropout_rate=0.5)
    model = network.EncoderDecoder(config, prompt=EncoderOutputPrompt())
    params = _init(model)
    tokens = jnp.asarray(ENCODER_TOKENS)

    def encode(seed):
        (encoded, _), state = model.apply(
            {"params": params},
            tokens,
            enable_dropout=True,
            method="encode",
            mutable=["intermediates"],
            rngs={"dropout": jax.random.key(seed)},
        )
        return encoded, state["intermediates"]["encoder"]["prompt"]["encoder_output"][0]

    encoded_0, seen_0 = encode(0)
    encoded_1, seen_1 = encode(1)
    no_prompt = network.EncoderDecoder(config)
    frozen_params = dict(
        params, encoder={k: v for k, v in params["encoder"].items() if k != "prompt"}
    )
    expected, _ = no_prompt.apply({"params": frozen_params}, tokens, method="encode")
    np.testing.assert_allclose(seen_0, expected, atol=1e-6)
    np.testing.assert_allclose(seen_1, expected, atol=1e-6)
    assert np.abs(encoded_0 - encoded_1).max() > 1e-3  # dropout still acts on the prompted pass


class TaskPrompt(nn.Module):
    """One prompt row per task, selected by `task_ids` (test-only)."""

    @nn.compact
    def __call__(self, input_tokens, embedded_inputs, task_ids):
        table = self.param("prompt", nn.initializers.normal(1.0), (2, 2, embedded_inputs.shape[-1]))
        return table[task_ids]  # [B, P, H]


def test_task_ids_reach_the_prompt():
    model = network.EncoderDecoder(t5_config.tiny(), prompt=TaskPrompt())
    tokens = jnp.asarray(ENCODER_TOKENS[:2])
    params = random_params(model, tokens, method="encode", task_ids=jnp.array([0, 1]))
    encode = lambda ids: model.apply({"params": params}, tokens, jnp.asarray(ids), method="encode")[
        0
    ]
    same = encode([0, 0])
    np.testing.assert_allclose(encode([0, 1])[0], same[0], atol=1e-6)
    assert np.abs(encode([0, 1])[1] - same[1]).max() > 1e-3


def test_bfloat16_activations_stay_close_to_float32():
    config = t5_config.tiny()
    model32 = network.EncoderDecoder(config)
    params = _init(model32)
    expected = _logits(model32, params, ENCODER_TOKENS, TARGET_TOKENS)
    model16 = network.EncoderDecoder(config.replace(dtype=jnp.bfloat16))
    actual = _logits(model16, params, ENCODER_TOKENS, TARGET_TOKENS)
    assert actual.dtype == np.float32
    real = TARGET_TOKENS > 0
    scale = np.abs(expected[real]).max()
    assert np.abs(actual[real] - expected[real]).max() < 0.05 * scale
    assert np.corrcoef(actual[real].ravel(), expected[real].ravel())[0, 1] > 0.999


def test_dropout_only_with_enable_dropout_and_rng():
    config = t5_config.tiny(dropout_rate=0.3)
    model = network.EncoderDecoder(config)
    params = _init(model)
    off = _logits(model, params, ENCODER_TOKENS, TARGET_TOKENS)
    eval_model = network.EncoderDecoder(config.replace(dropout_rate=0.0))
    np.testing.assert_allclose(off, _logits(eval_model, params, ENCODER_TOKENS, TARGET_TOKENS))
    args = (ENCODER_TOKENS, shift_right(TARGET_TOKENS), TARGET_TOKENS)
    on = jax.jit(
        lambda seed: model.apply({"params": params}, *args, rngs={"dropout": jax.random.key(seed)})
    )
    np.testing.assert_allclose(on(0), on(0))
    assert np.abs(on(0) - off).max() > 1e-3
    assert np.abs(on(0) - on(1)).max() > 1e-3


def test_jit_and_no_jit_agree():
    model = network.EncoderDecoder(t5_config.tiny())
    params = _init(model)
    args = (
        jnp.asarray(ENCODER_TOKENS),
        jnp.asarray(shift_right(TARGET_TOKENS)),
        jnp.asarray(TARGET_TOKENS),
    )
    apply = lambda p, *a: model.apply({"params": p}, *a, enable_dropout=False)
    np.testing.assert_allclose(jax.jit(apply)(params, *args), apply(params, *args), atol=1e-5)


def test_attention_dropout_mask_is_shared_by_all_queries():
    # T5X drops whole key positions (one mask per key, broadcast over queries): identical queries
    # therefore give identical outputs even with dropout on, though different from no dropout.
    attention = layers.MultiHeadAttention(num_heads=2, head_dim=4, dropout_rate=0.5)
    rng = np.random.default_rng(0)
    queries = jnp.asarray(np.repeat(rng.standard_normal((2, 1, 8)), 5, axis=1), jnp.float32)
    keys = jnp.asarray(rng.standard_normal((2, 7, 8)), jnp.float32)
    variables = attention.init(jax.random.key(0), queries, keys)
    dropped = attention.apply(
        variables, queries, keys, enable_dropout=True, rngs={"dropout": jax.random.key(1)}
    )
    plain = attention.apply(variables, queries, keys)
    np.testing.assert_allclose(dropped, jnp.broadcast_to(dropped[:, :1], dropped.shape), atol=1e-6)
    assert not np.allclose(dropped, plain, atol=1e-3)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_rematerialised_layers_keep_names_and_numerics(policy):
    config = t5_config.tiny(dropout_rate=0.2)
    plain_model = network.EncoderDecoder(config)
    remat_model = network.EncoderDecoder(config.replace(remat_policy=policy))
    params = _init(plain_model)
    assert jax.tree.structure(_init(remat_model)) == jax.tree.structure(params)
    decoder_inputs = jnp.asarray(shift_right(TARGET_TOKENS))

    def loss(model, params):
        logits = model.apply(
            {"params": params},
            jnp.asarray(ENCODER_TOKENS),
            decoder_inputs,
            jnp.asarray(TARGET_TOKENS),
            enable_dropout=True,
            rngs={"dropout": jax.random.key(3)},
        )
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    value, grads = jax.jit(jax.value_and_grad(functools.partial(loss, plain_model)))(params)
    remat_value, remat_grads = jax.jit(jax.value_and_grad(functools.partial(loss, remat_model)))(
        params
    )
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), remat_grads, grads
    )


def test_unknown_remat_policy_is_an_error():
    model = network.EncoderDecoder(t5_config.tiny(remat_policy="sometimes"))
    with pytest.raises(ValueError, match="remat_policy 'sometimes'"):
        _init(model)
