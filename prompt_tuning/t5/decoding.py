"""Decoding with the frozen T5: greedy, temperature sampling, beam search, and target scoring.

All functions are pure JAX and jittable (bind `model`, `max_decode_length`, `beam_size`, ... as
static arguments, e.g. with `functools.partial`). The encoder runs once; the decoder then runs one
token per step over an autoregressive cache inside `jax.lax.while_loop`.

Cache protocol (T5X style, `EncoderDecoder.decode(..., decode=True)` with a mutable `cache`):
1. `encoded, encoder_mask = model.apply(variables, encoder_input_tokens, task_ids,
   method="encode")` → `[B, P+T, H]`, `[B, P+T]`.
2. Initialise: `_, state = model.apply(variables, encoded, encoder_mask, zeros[B, S],
   decode=True, method="decode", mutable=["cache"])` with a full-length dummy decoder input.
   This creates, per decoder layer, `self_attention/cached_{key,value}` `[B, S, N, K]` (zeros),
   `encoder_decoder_attention/cached_key` `[B, N, K, P+T]` and `cached_value` `[B, N, P+T, K]`
   (the encoder output projected once, in the layouts a step's dots read) and
   `decoder/position` (int32 scalar, 0). Its logits are discarded.
3. Step: `logits, state = model.apply({"params": params, "cache": state["cache"]}, encoded,
   encoder_mask, tokens[B, 1], decode=True, method="decode", mutable=["cache"])` feeds the token
   at `position` (0 = start token at position 0), returns `[B, 1, V]` logits for position
   `position`, writes its key/value and advances `position` by one.

Decoder inputs are targets shifted right with 0 as the start token (T5X convention). Token 0 is
also padding: every returned sequence is padded with 0 after its EOS.

Letters: B batch, T encoder input length, S max decode length, V vocabulary, W beam size.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# Log-probability standing for "impossible"; finite so that sums and divisions stay finite.
NEG_INF = -1.0e7


def _encode(model: nn.Module, params: Any, encoder_input_tokens: Array, task_ids: Array | None):
    return model.apply(
        {"params": params}, encoder_input_tokens, task_ids, enable_dropout=False, method="encode"
    )


def init_cache(
    model: nn.Module, params: Any, encoded: Array, encoder_mask: Array, max_decode_length: int
) -> Any:
    """Step 2 of the protocol: the initial `cache` collection for `max_decode_length` steps.

    Args:
      model: an `EncoderDecoder`.
      params: its parameters (plain arrays).
      encoded: encoder output `[B, P+T, H]`.
      encoder_mask: `[B, P+T]` bool.
      max_decode_length: S, the number of decoding steps the cache holds.

    Returns:
      The `cache` collection (a nested dict of arrays).
    """
    dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
    _, state = model.apply(
        {"params": params},
        encoded,
        encoder_mask,
        dummy,
        decode=True,
        method="decode",
        mutable=["cache"],
    )
    return state["cache"]


def decode_step(
    model: nn.Module, params: Any, cache: Any, encoded: Array, encoder_mask: Array, tokens: Array
) -> tuple[Array, Any]:
    """Step 3 of the protocol: float32 logits `[B, V]` for the next position, and the new cache.

    Args:
      model: an `EncoderDecoder`.
      params: its parameters.
      cache: the `cache` collection from `init_cache` or the previous step.
      encoded: encoder output `[B, P+T, H]`.
      encoder_mask: `[B, P+T]` bool.
      tokens: `[B]` int, the decoder input at the current position (0 at the first step).

    Returns:
      `(logits [B, V], cache)`.
    """
    logits, state = model.apply(
        {"params": params, "cache": cache},
        encoded,
        encoder_mask,
        tokens[:, None],
        decode=True,
        method="decode",
        mutable=["cache"],
    )
    return logits[:, 0], state["cache"]


def pad_after_eos(tokens: Array, eos_id: int) -> Array:
    """Zeroes every position after the first EOS of each row of `tokens` `[..., S]`."""
    is_eos = (tokens == eos_id).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos  # EOS strictly before each position.
    return jnp.where(eos_before > 0, 0, tokens)


def _sample_loop(
    model: nn.Module,
    params: Any,
    encoder_input_tokens: Array,
    max_decode_length: int,
    task_ids: Array | None,
    eos_id: int,
    choose: Callable[[Array, Array], Array],
    rng: Array,
    lengths: Array | None = None,
) -> Array:
    """Decodes one token per step with `choose(logits [B, V], rng) -> [B]` until every row has
    its EOS or its `lengths` tokens."""
    params = nn.unbox(params)
    encoded, encoder_mask = _encode(model, params, encoder_input_tokens, task_ids)
    b = encoder_input_tokens.shape[0]
    cache = init_cache(model, params, encoded, encoder_mask, max_decode_length)
    tokens = jnp.zeros((b, max_decode_length), jnp.int32)
    done = jnp.zeros((b,), bool)
    if lengths is None:
        lengths = jnp.full((b,), max_decode_length, jnp.int32)

    def cond(state):
        i, _, _, done, _ = state
        return jnp.logical_and(i < max_decode_length, ~jnp.all(done))

    def body(state):
        i, tokens, cache, done, rng = state
        rng, step_rng = jax.random.split(rng)
        previous = jnp.where(i == 0, 0, tokens[:, jnp.maximum(i - 1, 0)])  # [B]
        logits, cache = decode_step(model, params, cache, encoded, encoder_mask, previous)
        new = jnp.where(done, 0, choose(logits, step_rng).astype(jnp.int32))  # [B]
        tokens = tokens.at[:, i].set(new)
        done = jnp.logical_or(done, jnp.logical_or(new == eos_id, i + 1 >= lengths))  # [B]
        return i + 1, tokens, cache, done, rng

    state = (jnp.asarray(0), tokens, cache, done, rng)
    _, tokens, _, _, _ = jax.lax.while_loop(cond, body, state)
    return pad_after_eos(tokens, eos_id)


def greedy_decode(
    model: nn.Module,
    params: Any,
    encoder_input_tokens: Array,
    max_decode_length: int,
    task_ids: Array | None = None,
    eos_id: int = 1,
    lengths: Array | None = None,
) -> Array:
    """Greedy (argmax) decoding.

    Args:
      model: an `EncoderDecoder` (with or without prompt).
      params: its parameters (plain arrays or boxed).
      encoder_input_tokens: `[B, T]` int, 0 = padding.
      max_decode_length: S, the maximum number of generated tokens (EOS included).
      task_ids: optional `[B]` int passed to the prompt.
      eos_id: end-of-sequence id; decoding of a row stops after it.
      lengths: optional `[B]` int, each row's own maximum length (<= S; a traced value): a row
        stops after that many tokens, and the loop once every row has stopped, so one compiled
        program serves short and long requests without decoding past them. A row's tokens equal
        the first `lengths` tokens of decoding it to S (0 after).

    Returns:
      `[B, S]` int32 tokens, 0 after EOS (and after a row's length).
    """
    choose = lambda logits, _: jnp.argmax(logits, axis=-1)
    rng = jax.random.key(0)  # Unused by argmax; keeps one loop for greedy and sampling.
    return _sample_loop(
        model,
        params,
        encoder_input_tokens,
        max_decode_length,
        task_ids,
        eos_id,
        choose,
        rng,
        lengths,
    )


def temperature_sample(
    model: nn.Module,
    params: Any,
    encoder_input_tokens: Array,
    max_decode_length: int,
    rng: Array,
    temperature: float = 1.0,
    topk: int = 0,
    task_ids: Array | None = None,
    eos_id: int = 1,
) -> Array:
    """Ancestral sampling from `softmax(logits / temperature)`, optionally among the top k.

    Args:
      model: an `EncoderDecoder`.
      params: its parameters.
      encoder_input_tokens: `[B, T]` int, 0 = padding.
      max_decode_length: S.
      rng: a `jax.random` key.
      temperature: softmax temperature; 0 means argmax (greedy).
      topk: sample only among the k most likely tokens; 0 means the whole vocabulary.
      task_ids: optional `[B]` int passed to the prompt.
      eos_id: end-of-sequence id.

    Returns:
      `[B, S]` int32 tokens, 0 after EOS.

    Raises:
      ValueError: for a negative temperature or topk.
    """
    if temperature < 0 or topk < 0:
        raise ValueError(f"temperature ({temperature}) and topk ({topk}) must be >= 0.")

    def choose(logits: Array, key: Array) -> Array:
        if temperature == 0:
            return jnp.argmax(logits, axis=-1)
        if topk:
            kth = jax.lax.top_k(logits, topk)[0][:, -1:]  # [B, 1]
            logits = jnp.where(logits < kth, NEG_INF, logits)
        return jax.random.categorical(key, logits / temperature, axis=-1)

    return _sample_loop(
        model, params, encoder_input_tokens, max_decode_length, task_ids, eos_id, choose, rng
    )


def brevity_penalty(alpha: float, length: Array) -> Array:
    """T5X/GNMT length normalisation `((5 + length) / 6) ** alpha`; scores are logprob / this."""
    return ((5.0 + length) / 6.0) ** alpha


def score(
    model: nn.Module,
    params: Any,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array,
    task_ids: Array | None = None,
) -> Array:
    """Sum of target log-likelihoods per example (for rank classification).

    Teacher forcing needs no cache: the encoder runs once and the decoder once over all positions.
    The decoder may score C targets per input: with `B*C` target rows for `B` input rows, row
    `b * C + c` is scored against input b, which is encoded once (rank classification of C labels
    then costs one encoder pass per example, not C).

    Args:
      model: an `EncoderDecoder`.
      params: its parameters.
      encoder_input_tokens: `[B, T]` int.
      decoder_input_tokens: `[B*C, S]` targets shifted right with 0 as the start token (C >= 1).
      decoder_target_tokens: `[B*C, S]` int; positions holding 0 are padding and not scored.
      task_ids: optional `[B]` int passed to the prompt.

    Returns:
      `[B*C]` float32 sums of `log p(target_s | input, targets_<s)` over real target positions.

    Raises:
      ValueError: the target rows are not a multiple of the input rows (raised by the decoder).
    """
    params = nn.unbox(params)
    encoded, encoder_mask = _encode(model, params, encoder_input_tokens, task_ids)
    # The decoder takes the C target rows of each input as they are: each input's cross-attention
    # keys and values are projected once (Decoder: C rows per encoded row).
    logits = model.apply(
        {"params": params},
        encoded,
        encoder_mask,
        decoder_input_tokens,
        decoder_target_tokens,
        method="decode",
    )
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, S, V]
    target = jnp.take_along_axis(log_probs, decoder_target_tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(decoder_target_tokens > 0, target, 0.0), axis=-1)  # [B]


def _gather_beams(x: Array, beam_indices: Array) -> Array:
    """Selects beams: `x` `[B, W_old, ...]`, `beam_indices` `[B, W_new]` -> `[B, W_new, ...]`."""
    index = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _gather_cache(cache: Any, beam_indices: Array) -> Any:
    """Selects beams in every cache array `[B*W, ...]`; the scalar `position` is shared."""
    b, w = beam_indices.shape

    def gather(x: Array) -> Array:
        if x.ndim == 0:
            return x
        beams = _gather_beams(x.reshape((b, w) + x.shape[1:]), beam_indices)  # [B, W, ...]
        return beams.reshape((b * w,) + x.shape[1:])  # [B*W, ...]

    return jax.tree_util.tree_map(gather, cache)


def _beam_step(i, state, logits, beam_size, alpha, eos_id, lengths):
    """Extends the live beams by one token and updates the finished set (T5X's algorithm).

    `lengths [B]` is each row's maximum length: at step `lengths - 1` every candidate finishes,
    and after it nothing new finishes.
    """
    live_seqs, live_logprobs, fin_seqs, fin_scores, fin_flags, cache = state
    b, w, vocab = live_seqs.shape[0], beam_size, logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits).reshape(b, w, vocab)  # [B, W, V]
    candidates = (live_logprobs[..., None] + log_probs).reshape(b, w * vocab)  # [B, W*V]
    top_logprobs, top_index = jax.lax.top_k(candidates, 2 * w)  # [B, 2W]
    top_beams, top_tokens = top_index // vocab, top_index % vocab
    top_seqs = _gather_beams(live_seqs, top_beams).at[:, :, i].set(top_tokens)  # [B, 2W, S]
    is_eos = top_tokens == eos_id
    # At the last step every candidate is finished (it has reached the maximum length).
    finishing = jnp.logical_or(is_eos, (i == lengths - 1)[:, None])  # [B, 2W]
    finishing = jnp.logical_and(finishing, (i < lengths)[:, None])

    live_logprobs, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logprobs), w)  # [B, W]
    live_seqs = _gather_beams(top_seqs, keep)
    cache = _gather_cache(cache, _gather_beams(top_beams, keep))

    new_scores = top_logprobs / brevity_penalty(alpha, (i + 1).astype(jnp.float32))
    all_scores = jnp.concatenate([fin_scores, jnp.where(finishing, new_scores, NEG_INF)], 1)
    all_seqs = jnp.concatenate([fin_seqs, top_seqs], axis=1)  # [B, 3W, S]
    all_flags = jnp.concatenate([fin_flags, finishing], axis=1)  # [B, 3W]
    fin_scores, best = jax.lax.top_k(all_scores, w)  # [B, W]
    fin_seqs, fin_flags = _gather_beams(all_seqs, best), _gather_beams(all_flags, best)
    return live_seqs, live_logprobs, fin_seqs, fin_scores, fin_flags, cache


def beam_search(
    model: nn.Module,
    params: Any,
    encoder_input_tokens: Array,
    max_decode_length: int,
    beam_size: int,
    alpha: float = 0.6,
    task_ids: Array | None = None,
    eos_id: int = 1,
    lengths: Array | None = None,
) -> tuple[Array, Array]:
    """Beam search with T5X's brevity penalty.

    A finished hypothesis of `length` tokens (EOS included) scores
    `log p(tokens) / ((5 + length) / 6) ** alpha`. Hypotheses still alive at the maximum length
    are finished there. The search stops early once no live beam can beat the worst kept
    finished one.

    Args:
      model: an `EncoderDecoder`.
      params: its parameters.
      encoder_input_tokens: `[B, T]` int, 0 = padding.
      max_decode_length: S.
      beam_size: W, beams kept per example (W * 2 <= V).
      alpha: brevity penalty exponent (0 = rank by log-likelihood).
      task_ids: optional `[B]` int passed to the prompt.
      eos_id: end-of-sequence id.
      lengths: optional `[B]` int, each row's own maximum length (<= S; a traced value, so one
        compiled search serves rows of different lengths); each row's result equals a search
        with `max_decode_length` = its length, padded with 0 to S. None: S for every row.

    Returns:
      `(tokens [B, W, S] int32, scores [B, W] float32)`, best first, 0 after EOS.
    """
    params = nn.unbox(params)
    b, w, s = encoder_input_tokens.shape[0], beam_size, max_decode_length
    lengths = jnp.full((b,), s, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    encoded, encoder_mask = _encode(model, params, encoder_input_tokens, task_ids)
    encoded = jnp.repeat(encoded, w, axis=0)  # [B*W, P+T, H]
    encoder_mask = jnp.repeat(encoder_mask, w, axis=0)  # [B*W, P+T]
    cache = init_cache(model, params, encoded, encoder_mask, s)
    live_logprobs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (w - 1)), (b, 1))  # Only beam 0 starts.
    seqs = jnp.zeros((b, w, s), jnp.int32)
    state = (seqs, live_logprobs, seqs, jnp.full((b, w), NEG_INF), jnp.zeros((b, w), bool), cache)
    best_possible_penalty = brevity_penalty(alpha, lengths.astype(jnp.float32))  # [B]

    def cond(loop):
        i, (_, live_logprobs, _, fin_scores, fin_flags, _) = loop
        best_live = live_logprobs[:, 0] / best_possible_penalty  # [B]
        worst_finished = jnp.min(jnp.where(fin_flags, fin_scores, NEG_INF), axis=1)  # [B]
        row_done = jnp.logical_or(worst_finished > best_live, i >= lengths)  # [B]
        return jnp.logical_and(i < s, ~jnp.all(row_done))

    def body(loop):
        i, state = loop
        live_seqs, cache = state[0], state[-1]
        previous = jnp.where(i == 0, 0, live_seqs[:, :, jnp.maximum(i - 1, 0)])  # [B, W]
        logits, cache = decode_step(
            model, params, cache, encoded, encoder_mask, previous.reshape(b * w)
        )  # [B*W, V]
        state = state[:-1] + (cache,)
        return i + 1, _beam_step(i, state, logits, w, alpha, eos_id, lengths)

    _, state = jax.lax.while_loop(cond, body, (jnp.asarray(0), state))
    _, _, fin_seqs, fin_scores, _, _ = state
    return pad_after_eos(fin_seqs, eos_id), fin_scores
