"""Our prompted T5 as the `module` of T5X's `EncoderDecoderModel` (`python -m t5x.train`).

`T5XEncoderDecoder(network)` wraps a `prompt_tuning.t5.EncoderDecoder` (with any prompt module)
in the interface T5X's `models.EncoderDecoderModel` calls, without importing T5X:

- `__call__(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, ...,
  enable_dropout, decode, max_decode_length)` -> logits `[B, S, V]` (T5X's `_compute_logits`,
  and with `decode=True` its cache initialisation);
- `encode(encoder_input_tokens, ..., enable_dropout)` -> `[B, P+T, H]`;
- `decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, ...,
  enable_dropout, decode, max_decode_length)` -> logits, one token per call with `decode=True`.

Variables, as T5X expects them:
- `params`: the network's tree at the top level (`token_embedder`, `encoder` with
  `encoder/prompt/...`, `decoder`): T5X/Flaxformer names, so T5X checkpoints restore into it;
- `params_axes`: `flax.linen.partitioning.AxisMetadata(names=...)` under `<param>_axes`, the
  layout `param_with_axes` writes, from the network's logical axis names; T5X's partitioner and
  Adafactor's factor rules read them;
- `cache` (decoding): the network's self-attention caches and its step counter renamed
  `cache_index` (the leaf T5X's beam search and sampling leave alone). The cross-attention keys and
  values are projected again at every step from the `encoded` T5X passes in, as T5X's own T5
  does: T5X creates the cache from a dummy all-ones input, so cached cross-attention would attend
  to the dummy.

The network runs as a pure function inside the wrapper (`network.apply`), so the parameter names
stay the network's own. Packing is not supported (prompt tuning trains unpacked, as
google-research/prompt-tuning's `pack = False`): segment ids raise. Task ids are not part of
T5X's batch, so multi-task prompts (`PromptBank` with N > 1) cannot run here.

Letters: B batch, T encoder input length, P prompt length, S decoder length, H model dim,
V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta
from flax.linen import partitioning as flax_partitioning

Array = jax.Array

# Our network's cache (docs/DESIGN.md) -> T5X's names; cross-attention is never cached here.
_POSITION, _CACHE_INDEX = "position", "cache_index"
_CROSS_ATTENTION = "encoder_decoder_attention"


def params_axes(boxed: Mapping[str, Any]) -> dict[str, Any]:
    """The `params_axes` tree of a boxed parameter tree (`param_with_axes`'s layout).

    Args:
      boxed: parameters whose leaves are flax `Partitioned` boxes (from `init`).

    Returns:
      The same nesting with each leaf `<name>` replaced by `<name>_axes: AxisMetadata(names)`.

    Raises:
      ValueError: a parameter carries no logical axis names.
    """
    out = {}
    for name, value in boxed.items():
        if isinstance(value, meta.Partitioned):
            out[f"{name}_axes"] = flax_partitioning.AxisMetadata(names=tuple(value.names))
        elif isinstance(value, Mapping):
            out[name] = params_axes(value)
        else:
            raise ValueError(
                f"Parameter {name!r} has no logical axis names; declare it with "
                "nn.with_logical_partitioning so T5X can partition it."
            )
    return out


def _to_t5x_cache(cache: Mapping[str, Any]) -> dict[str, Any]:
    """Our cache -> T5X's: `position` renamed `cache_index`, cross-attention dropped."""
    out = {}
    for name, value in cache.items():
        if name == _CROSS_ATTENTION:
            continue
        key = _CACHE_INDEX if name == _POSITION else name
        out[key] = _to_t5x_cache(value) if isinstance(value, Mapping) else value
    return out


def _from_t5x_cache(cache: Mapping[str, Any]) -> dict[str, Any]:
    """T5X's cache -> ours (cross-attention left out, so the network projects it again)."""
    out = {}
    for name, value in cache.items():
        key = _POSITION if name == _CACHE_INDEX else name
        out[key] = _from_t5x_cache(value) if isinstance(value, Mapping) else value
    return out


def _no_packing(**segments: Any) -> None:
    given = [name for name, value in segments.items() if value is not None]
    if given:
        raise ValueError(
            f"T5XEncoderDecoder got {given}: packed examples are not supported (prompt tuning "
            "trains unpacked). Set `utils.DatasetConfig.pack = False` (gin_configs/t5x/runs/*.gin "
            "does)."
        )


class T5XEncoderDecoder(nn.Module):
    """T5X's encoder-decoder interface around a prompted `prompt_tuning.t5.EncoderDecoder`.

    Attributes:
      network: the (unbound) network with its prompt, e.g. `EncoderDecoder(config, prompt)`.
    """

    network: nn.Module

    def _network(self) -> nn.Module:
        """The network, unbound: applied as a pure function, never adopted as a child."""
        return self.network.clone(parent=None)

    def _params(self, encoder_input_tokens: Array, decoder_input_tokens: Array) -> Any:
        """The network's parameters; on `init`, created by the network's own `init`."""
        if self.is_initializing() and not self.has_variable("params", "token_embedder"):
            rng = self.make_rng("params")
            ones = lambda x: jnp.ones(x.shape, jnp.int32)  # noqa: E731
            boxed = self._network().init(
                {"params": rng, "dropout": rng},
                ones(encoder_input_tokens),
                ones(decoder_input_tokens),
                ones(decoder_input_tokens),
                enable_dropout=False,
            )["params"]
            for name, value in meta.unbox(boxed).items():
                self.put_variable("params", name, value)
            for name, value in params_axes(boxed).items():
                self.put_variable("params_axes", name, value)
        return self.variables["params"]

    def _apply(
        self, params: Any, *args, method: str | None, decode: bool, enable_dropout: bool, **kwargs
    ):
        """Runs `network.<method>` (None: `__call__`) as a pure function of `params`.

        With `decode=True` it reads and writes the T5X-layout `cache` collection.
        """
        variables = {"params": params}
        if decode:
            kwargs["decode"] = True
        if decode and self.has_variable("cache", "decoder"):
            variables["cache"] = _from_t5x_cache({"decoder": self.get_variable("cache", "decoder")})
        rngs = {"dropout": self.make_rng("dropout")} if enable_dropout else None
        out = self._network().apply(
            variables,
            *args,
            method=method,
            enable_dropout=enable_dropout,
            rngs=rngs,
            mutable=["cache"] if decode else False,
            **kwargs,
        )
        if not decode:
            return out
        out, state = out
        for name, value in _to_t5x_cache(state["cache"]).items():
            self.put_variable("cache", name, value)
        return out

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        enable_dropout: bool = True,
    ) -> Array:
        """Encodes `[B, T]` tokens (0 = padding) -> `[B, P+T, H]`, the prompt in front."""
        _no_packing(encoder_segment_ids=encoder_segment_ids)
        params = self.variables["params"]
        encoded, _ = self._apply(
            params, encoder_input_tokens, method="encode", decode=False,
            enable_dropout=enable_dropout,
        )  # fmt: skip
        return encoded  # [B, P+T, H]

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Decoder logits `[B, S, V]` (float32) attending to `encoded` `[B, P+T, H]`.

        Args:
          encoded: `encode`'s output.
          encoder_input_tokens: `[B, T]`, for the encoder padding mask (the P prompt positions
            in front of them are always visible).
          decoder_input_tokens: `[B, S]`, or `[B, 1]` per call once the `cache` exists.
          decoder_target_tokens: `[B, S]`; its non-zero positions are the valid ones.
          encoder_segment_ids: must be None (no packing).
          decoder_segment_ids: must be None.
          decoder_positions: unused (positions are the token indices; no packing).
          enable_dropout: apply dropout (needs the `dropout` rng).
          decode: one token per call over the mutable `cache` collection.
          max_decode_length: unused: the cache's length is that of the first decode call.

        Returns:
          `[B, S, V]` logits.
        """
        del decoder_positions, max_decode_length
        _no_packing(
            encoder_segment_ids=encoder_segment_ids, decoder_segment_ids=decoder_segment_ids
        )
        b, t = encoder_input_tokens.shape
        prompt = jnp.ones((b, encoded.shape[1] - t), bool)  # [B, P]
        mask = jnp.concatenate([prompt, encoder_input_tokens > 0], axis=1)  # [B, P+T]
        return self._apply(
            self.variables["params"],
            encoded,
            mask,
            decoder_input_tokens,
            None if decode and self.has_variable("cache", "decoder") else decoder_target_tokens,
            method="decode",
            decode=decode,
            enable_dropout=enable_dropout,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Teacher-forced logits `[B, S, V]`; with `decode=True`, creates the decoding cache.

        The arguments are T5X's (`EncoderDecoderModel._compute_logits`, `_compute_kv_cache`).
        """
        del encoder_positions
        # T5X initializes with float "tokens" when it is given no input types (t5x.eval).
        tokens = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
        encoder_input_tokens, decoder_input_tokens = map(
            tokens, (encoder_input_tokens, decoder_input_tokens)
        )
        decoder_target_tokens = tokens(decoder_target_tokens)
        params = self._params(encoder_input_tokens, decoder_input_tokens)
        if not decode:  # the network's own forward pass, as our trainer runs it
            _no_packing(
                encoder_segment_ids=encoder_segment_ids, decoder_segment_ids=decoder_segment_ids
            )
            return self._apply(
                params, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                method=None, decode=False, enable_dropout=enable_dropout,
            )  # fmt: skip
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )
