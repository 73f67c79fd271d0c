"""Cached decoding against step-by-step full forward passes of the same model."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import decoding, network

ENCODER_TOKENS = jnp.array([[5, 9, 17, 33, 2, 1], [7, 21, 1, 0, 0, 0], [44, 3, 8, 1, 0, 0]])
MAX_LENGTH = 7


class DummyPrompt(nn.Module):
    """A Lester-style prompt `[P, H]` broadcast over the batch (test-only)."""

    @nn.compact
    def __call__(self, input_tokens, embedded_inputs, task_ids):
        prompt = self.param("prompt", nn.initializers.normal(1.0), (2, embedded_inputs.shape[-1]))
        return jnp.broadcast_to(prompt, (embedded_inputs.shape[0],) + prompt.shape)  # [B, P, H]


CONFIGS = {
    "t5_1_1": (t5_config.tiny(), None),
    "t5_original": (t5_config.tiny(mlp_activations=("relu",), logits_via_embedding=True), None),
    "prompt": (t5_config.tiny(), DummyPrompt()),
}


@functools.cache
def model_and_params(name: str):
    config, prompt = CONFIGS[name]
    model = network.EncoderDecoder(config, prompt=prompt)
    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, tokens))
    rng = np.random.default_rng(3)  # Random weights without compiling `init` (slow on CPU).

    def fill(path, leaf):
        x = rng.standard_normal(leaf.shape)
        if path[-1].key == "kernel":
            x = x / np.sqrt(leaf.shape[0])  # Keeps activations O(1), like T5's init.
        return jnp.asarray(x, jnp.float32)

    return model, jax.tree_util.tree_map_with_path(fill, nn.unbox(shapes["params"]))


@functools.partial(jax.jit, static_argnums=0)
def full_forward_logits(model, params, decoder_input_tokens):
    """Logits `[B, S, V]` of an uncached forward pass (every decoder position valid)."""
    encoded, mask = model.apply({"params": params}, ENCODER_TOKENS, method="encode")
    return model.apply({"params": params}, encoded, mask, decoder_input_tokens, method="decode")


# Jitted once per module (compilation dominates these tests); `model` and lengths are static.
encode = jax.jit(
    lambda model, params, tokens: model.apply({"params": params}, tokens, method="encode"),
    static_argnums=0,
)
init_cache = jax.jit(decoding.init_cache, static_argnums=(0, 4))
decode_step = jax.jit(decoding.decode_step, static_argnums=0)
score = jax.jit(decoding.score, static_argnums=0)
greedy_decode = jax.jit(decoding.greedy_decode, static_argnums=(0, 3), static_argnames="eos_id")
beam_search = jax.jit(decoding.beam_search, static_argnums=(0, 3, 4), static_argnames="eos_id")
temperature_sample = jax.jit(decoding.temperature_sample, static_argnums=(0, 3, 5, 6))


def reference_greedy(model, params, eos_id):
    """Greedy decoding by re-running the full, uncached decoder for every new token."""
    forward = functools.partial(full_forward_logits, model)
    b = ENCODER_TOKENS.shape[0]
    tokens = np.zeros((b, MAX_LENGTH), np.int32)
    done = np.zeros(b, bool)
    for i in range(MAX_LENGTH):
        inputs = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]  # Shift right, 0 = start.
        best = np.asarray(forward(params, jnp.asarray(inputs)))[:, i].argmax(-1)
        tokens[:, i] = np.where(done, 0, best)
        done |= tokens[:, i] == eos_id
    return tokens


def frequent_token(tokens):
    """An id the model emits mid-sequence, used as EOS so that rows end at different steps."""
    return int(tokens[0, 2]) if tokens[0, 2] != 0 else int(tokens[1, 1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_step_logits_equal_full_forward(name):
    model, params = model_and_params(name)
    targets = jnp.array([[3, 4, 5, 6, 7, 8, 1], [9, 10, 1, 0, 0, 0, 0], [11, 12, 13, 1, 0, 0, 0]])
    inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    expected = full_forward_logits(model, params, inputs)
    encoded, mask = encode(model, params, ENCODER_TOKENS)
    cache = init_cache(model, params, encoded, mask, MAX_LENGTH)
    for i in range(MAX_LENGTH):
        logits, cache = decode_step(model, params, cache, encoded, mask, inputs[:, i])
        np.testing.assert_allclose(logits, expected[:, i], atol=1e-5, rtol=1e-5)
    assert int(cache["decoder"]["position"]) == MAX_LENGTH


@pytest.mark.parametrize("name", ["t5_1_1", "prompt"])
def test_greedy_equals_argmax_of_full_forward_passes(name):
    model, params = model_and_params(name)
    no_eos = reference_greedy(model, params, eos_id=-1)
    eos_id = frequent_token(no_eos)
    expected = reference_greedy(model, params, eos_id)
    actual = np.asarray(greedy_decode(model, params, ENCODER_TOKENS, MAX_LENGTH, eos_id=eos_id))
    np.testing.assert_array_equal(actual, expected)
    ended = (expected == eos_id).any(axis=1)
    assert ended.any()  # At least one row stopped early and is padded with 0 after its EOS.
    for row in np.flatnonzero(ended):
        stop = int(np.argmax(expected[row] == eos_id))
        np.testing.assert_array_equal(actual[row, stop + 1 :], 0)


def test_score_is_the_sum_of_target_log_softmax():
    model, params = model_and_params("prompt")
    targets = np.array([[3, 4, 1, 0], [9, 10, 11, 1], [12, 1, 0, 0]])
    inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    apply = jax.jit(functools.partial(model.apply, enable_dropout=False))
    logits = np.asarray(apply({"params": params}, ENCODER_TOKENS, inputs, targets))
    log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    expected = (picked * (targets > 0)).sum(axis=1)
    actual = score(model, params, ENCODER_TOKENS, inputs, targets)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-5)


def test_score_of_several_targets_per_input_equals_one_forward_pass_per_row():
    """C = 3 target rows per input (rank classification): the decoder attends to each input's
    single encoding (keys/values projected once) and must give what a full forward pass over the
    input repeated for every row gives, padded target positions included."""
    model, params = model_and_params("prompt")
    encoder = np.asarray(ENCODER_TOKENS)
    c = 3
    rng = np.random.default_rng(7)
    targets = rng.integers(3, 20, (len(encoder) * c, 4))
    lengths = rng.integers(1, 5, len(targets))  # rows of one input differ in length
    targets = np.where(np.arange(4)[None] < lengths[:, None], targets, 0)
    inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    apply = jax.jit(functools.partial(model.apply, enable_dropout=False))
    logits = np.asarray(apply({"params": params}, np.repeat(encoder, c, axis=0), inputs, targets))
    log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    expected = (picked * (targets > 0)).sum(axis=1)
    actual = score(model, params, encoder, inputs, targets)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="got 8 decoder rows for 3 encoded rows"):
        score(model, params, encoder, inputs[:-1], targets[:-1])


def _beam(model, params, beam_size, alpha, eos_id):
    tokens, scores = beam_search(
        model, params, ENCODER_TOKENS, MAX_LENGTH, beam_size, alpha, eos_id=eos_id
    )
    return np.asarray(tokens), np.asarray(scores)


def _normalised_scores(model, params, tokens, alpha, eos_id):
    """`score(sequence) / ((5 + length) / 6) ** alpha` for `tokens` `[B, W, S]`."""
    b, w, s = tokens.shape
    flat = tokens.reshape(b * w, s)
    inputs = np.pad(flat, ((0, 0), (1, 0)))[:, :-1]
    encoder = np.repeat(np.asarray(ENCODER_TOKENS), w, axis=0)
    # Targets are scored up to and including EOS (or over all S positions without EOS).
    has_eos = (flat == eos_id).any(axis=1)
    length = np.where(has_eos, np.argmax(flat == eos_id, axis=1) + 1, s)
    targets = np.where(np.arange(s)[None] < length[:, None], flat, 0)
    log_likelihood = np.asarray(score(model, params, encoder, inputs, targets))
    return (log_likelihood / ((5.0 + length) / 6.0) ** alpha).reshape(b, w)


def test_beam_of_one_without_eos_is_greedy():
    model, params = model_and_params("t5_1_1")
    greedy = reference_greedy(model, params, eos_id=-1)
    tokens, scores = _beam(model, params, beam_size=1, alpha=0.6, eos_id=-1)
    np.testing.assert_array_equal(tokens[:, 0], greedy)
    expected = _normalised_scores(model, params, tokens, 0.6, eos_id=-1)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_scores_are_length_normalised_log_likelihoods(alpha):
    model, params = model_and_params("prompt")
    eos_id = frequent_token(reference_greedy(model, params, eos_id=-1))
    tokens, scores = _beam(model, params, beam_size=3, alpha=alpha, eos_id=eos_id)
    assert tokens.shape == (3, 3, MAX_LENGTH) and scores.shape == (3, 3)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # Best first.
    assert (tokens == eos_id).any()  # Some hypotheses ended before the maximum length.
    np.testing.assert_allclose(
        scores, _normalised_scores(model, params, tokens, alpha, eos_id), atol=1e-4, rtol=1e-5
    )
    for row in tokens.reshape(-1, MAX_LENGTH):  # Distinct hypotheses per example, 0 after EOS.
        if (row == eos_id).any():
            np.testing.assert_array_equal(row[np.argmax(row == eos_id) + 1 :], 0)
    assert all(len({tuple(t) for t in beams}) == 3 for beams in tokens)


def test_sampling_with_topk_one_or_zero_temperature_is_greedy():
    model, params = model_and_params("t5_1_1")
    greedy = greedy_decode(model, params, ENCODER_TOKENS, MAX_LENGTH)
    rng = jax.random.key(7)
    top1 = temperature_sample(model, params, ENCODER_TOKENS, MAX_LENGTH, rng, 5.0, 1)
    np.testing.assert_array_equal(top1, greedy)
    cold = temperature_sample(model, params, ENCODER_TOKENS, MAX_LENGTH, rng, 0.0, 0)
    np.testing.assert_array_equal(cold, greedy)


def total_variation(p, q):
    """Total variation distance between two distributions over the same ids."""
    return 0.5 * float(np.abs(p - q).sum())


def test_sampled_first_tokens_follow_the_tempered_softmax_and_topk():
    model, params = model_and_params("t5_1_1")
    copies = 20000
    tokens = jnp.tile(ENCODER_TOKENS[:1], (copies, 1))
    first_logits = np.asarray(full_forward_logits(model, params, jnp.zeros((3, 1), jnp.int32)))[
        0, 0
    ].astype(np.float64)
    sample = temperature_sample
    drawn = np.asarray(sample(model, params, tokens, 1, jax.random.key(0), 2.0, 0))[:, 0]
    frequencies = np.bincount(drawn, minlength=first_logits.size) / copies
    probs = {t: scipy.special.softmax(first_logits / t) for t in (1.0, 2.0, 4.0)}
    # 20,000 draws from these 128 near-uniform probabilities are ~0.03 from them in total variation
    # (sampling noise: 0.042 at most in 1,000 simulated runs; these draws 0.030); the tempered
    # softmaxes at 1 and 4 are 0.24 and 0.11 away (drawn at 4 with this key: 0.114).
    bound = 0.06
    assert total_variation(frequencies, probs[2.0]) < bound
    assert min(total_variation(probs[t], probs[2.0]) for t in (1.0, 4.0)) > bound + 0.04
    topk = np.asarray(sample(model, params, tokens, 1, jax.random.key(1), 2.0, 3))[:, 0]
    np.testing.assert_array_equal(np.unique(topk), np.sort(np.argsort(first_logits)[-3:]))
