"""The frozen T5 encoder-decoder (T5 1.1 / LM-adapted and original T5) with a prompt hook.

Parameter tree (T5X/Flaxformer names, no `target` level): `token_embedder/embedding [V, H]`,
`encoder/{layers_i, encoder_norm, relpos_bias, prompt}`, `decoder/{layers_i, decoder_norm,
relpos_bias, logits_dense}`. With `relative_attention_per_layer` (UMT5) each layer has its own
table, `{encoder,decoder}/layers_i/relpos_bias/rel_embedding` (T5X scalable_t5's names), and the
stacks have none. See docs/DESIGN.md for the full contract.

Letters: B batch, T encoder input length, P prompt length, H model dim, S decoder length,
V vocabulary, N heads.

The prompt is a field of the encoder. A prompt module is called as
`prompt(input_tokens [B, T], embedded_inputs [B, T, H], task_ids [B] | None) -> [B, P, H]` and its
output is prepended to the embedded inputs; prompt positions are always valid. Optional attributes:
`per_layer` (then `prompt.layer_prompt(i, input_tokens, hidden, task_ids) -> [B, P, H]` replaces
`hidden[:, :P]` before every layer i >= 1), `needs_encoder_output` (then the encoder first runs
without the prompt and without dropout, and passes the stop-gradient result as
`encoder_output=[B, T, H]`), `has_prompt_mask` (then `prompt.prompt_mask(task_ids) -> [B, P]`
bool marks the valid prompt positions of each example; the others are masked like padding, so
prompts of different lengths, right-aligned in P, share a batch) and `updates_inputs` (then the
call returns `(prompt [B, P, H], updated_inputs [B, T, H])` and the updated embeddings replace the
frozen ones behind the prompt: DePT; the padding mask is still `input_tokens > 0`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.t5 import layers, remat
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.sharding import constrain

Array = jax.Array


def _norm(config: T5Config, name: str) -> layers.RMSNorm:
    # float32 out, also in bfloat16 models: the next matmul casts its operand itself, so the
    # gradient flowing back into the norm (whose backward subtracts nearly equal terms) is float32.
    return layers.RMSNorm(config.layer_norm_epsilon, jnp.float32, config.param_dtype, name=name)


def _attention(config: T5Config, name: str, cross: bool = False) -> layers.MultiHeadAttention:
    return layers.MultiHeadAttention(
        config.num_heads,
        config.head_dim,
        config.dropout_rate,
        cross,
        config.dtype,
        config.param_dtype,
        name=name,
    )


def _mlp(config: T5Config) -> layers.MlpBlock:
    return layers.MlpBlock(
        config.mlp_dim,
        tuple(config.mlp_activations),
        config.dropout_rate,
        config.dtype,
        config.param_dtype,
        name="mlp",
    )


def _relpos(config: T5Config) -> layers.RelativePositionBiases:
    return layers.RelativePositionBiases(
        config.relative_attention_num_buckets,
        config.relative_attention_max_distance,
        config.num_heads,
        config.dtype,
        config.param_dtype,
        name="relpos_bias",
    )


class EncoderLayer(nn.Module):
    """Pre-norm self-attention then pre-norm MLP, each with dropout and a residual."""

    config: T5Config

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, bias: Array | None, enable_dropout: bool = False
    ) -> Array:
        """Maps hidden states `x` `[B, L, H]` with mask `[B, 1, L, L]`, bias `[1, N, L, L]`.

        `bias` is None when the layer has its own table (`relative_attention_per_layer`).
        """
        if bias is None:
            positions = np.arange(x.shape[1])  # static: the buckets become constants
            bias = _relpos(self.config)(positions, positions, bidirectional=True)  # [1, N, L, L]
        dropout = nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))
        y = _norm(self.config, "pre_attention_layer_norm")(x)
        y = _attention(self.config, "attention")(y, y, mask, bias, enable_dropout)
        x = x + dropout(y, deterministic=not enable_dropout)
        y = _norm(self.config, "pre_mlp_layer_norm")(x)
        y = _mlp(self.config)(y, enable_dropout)
        return constrain(x + dropout(y, deterministic=not enable_dropout), layers.HIDDEN_AXES)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the encoder, and MLP."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        self_mask: Array | None,
        cross_mask: Array,
        bias: Array | None,
        enable_dropout: bool = False,
        decode: bool = False,
        decode_position: Array | None = None,
    ) -> Array:
        """Maps decoder states `x` `[B*C, S, H]` attending to `encoded` `[B, T, H]` (C >= 1).

        Args:
          x: decoder hidden states `[B*C, S, H]`; row `b * C + c` attends to encoded row b.
          encoded: encoder output `[B, T, H]`.
          self_mask: `[B*C or 1, 1, S, S_keys]` self-attention mask.
          cross_mask: `[B, 1, C*S, T]` encoder-decoder mask (query c*S + s is row b*C+c's s).
          bias: relative position bias `[1, N, S, S_keys]`, or None when the layer has its own
            table (`relative_attention_per_layer`).
          enable_dropout: apply dropout.
          decode: one-token cached decoding.
          decode_position: the position of the token in decode mode.

        Returns:
          `[B, S, H]`.
        """
        deterministic = not enable_dropout
        if bias is None:
            bias = self._own_bias(x, self_mask, decode_position)
        dropout = nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))
        y = _norm(self.config, "pre_self_attention_layer_norm")(x)
        y = _attention(self.config, "self_attention")(
            y, y, self_mask, bias, enable_dropout, decode, decode_position
        )
        x = x + dropout(y, deterministic=deterministic)
        y = _norm(self.config, "pre_cross_attention_layer_norm")(x)
        # C decoder rows per encoded row (rank classification's C label rows per input): the
        # rows of one input attend as one `[C*S]` query sequence, so its keys and values are
        # projected once, not C times.
        rows, s, h = y.shape
        y = _attention(self.config, "encoder_decoder_attention", cross=True)(
            y.reshape(encoded.shape[0], -1, h), encoded, cross_mask, None, enable_dropout, decode
        ).reshape(rows, s, h)
        x = x + dropout(y, deterministic=deterministic)
        y = _norm(self.config, "pre_mlp_layer_norm")(x)
        y = _mlp(self.config)(y, enable_dropout)
        return constrain(x + dropout(y, deterministic=deterministic), layers.HIDDEN_AXES)

    def _own_bias(self, x: Array, self_mask: Array, decode_position: Array | None) -> Array:
        """This layer's causal bias: `[1, N, S, S]`, or `[1, N, 1, S_max]` for one cached token."""
        relpos = _relpos(self.config)
        if decode_position is not None:
            keys = jnp.arange(self_mask.shape[-1])  # [S_max]
            return relpos(decode_position[None], keys, bidirectional=False)  # [1, N, 1, S_max]
        positions = np.arange(x.shape[1])  # static: the buckets become constants
        return relpos(positions, positions, bidirectional=False)  # [1, N, S, S]


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _layer_class(cls: type[nn.Module], config: T5Config, static_argnums: tuple[int, ...]):
    """`cls`, or `cls` rematerialised per `config.remat_policy` (same parameter names)."""
    if config.remat_policy == "none":
        return cls
    if config.remat_policy not in _REMAT_POLICIES:
        raise ValueError(
            f"Unknown remat_policy {config.remat_policy!r}; use 'none', 'full' or 'dots'."
        )
    policy = _REMAT_POLICIES[config.remat_policy]
    return nn.remat(cls, static_argnums=static_argnums, policy=policy)


def _call_layer(layer: nn.Module, config: T5Config, inputs, static, decode: bool = False):
    """Calls a (possibly rematerialised) layer; remat runs ordered after its cotangent."""
    if config.remat_policy == "none" or decode or layer.is_initializing():
        return layer(*inputs, *static)
    return remat.call(layer, inputs, static)


class Encoder(nn.Module):
    """The T5 encoder stack with an optional prompt (a field: its params live under `prompt/`).

    Attributes:
      config: model hyperparameters.
      shared_embedding: the `token_embedder` shared with the decoder.
      prompt: optional prompt module (see the module docstring for its call signature).
    """

    config: T5Config
    shared_embedding: nn.Module
    prompt: nn.Module | None = None

    def setup(self):
        cfg = self.config
        # static: enable_dropout (self is argument 0).
        layer_cls = _layer_class(EncoderLayer, cfg, static_argnums=(4,))
        self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_encoder_layers)]
        self.encoder_norm = _norm(cfg, "encoder_norm")
        self.relpos_bias = None if cfg.relative_attention_per_layer else _relpos(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

    def __call__(
        self, input_tokens: Array, task_ids: Array | None = None, enable_dropout: bool = False
    ) -> tuple[Array, Array]:
        """Encodes `input_tokens` `[B, T]` (0 = padding).

        Args:
          input_tokens: int token ids `[B, T]`.
          task_ids: int `[B]` passed to the prompt, or None.
          enable_dropout: apply dropout (needs the `dropout` rng).

        Returns:
          `(encoded [B, P+T, H], mask [B, P+T] bool)`; P = 0 without a prompt.

        Raises:
          ValueError: when the prompt returns a wrongly shaped array.
        """
        embedded = self.shared_embedding(input_tokens)  # [B, T, H]
        mask = input_tokens > 0  # [B, T]
        if self.prompt is None:
            return self._stack(embedded, mask, enable_dropout), mask

        kwargs = {}
        if getattr(self.prompt, "needs_encoder_output", False):
            # The frozen sentence encoder runs without dropout, so its output is a fixed function
            # of the input (cacheable, and equal in training and evaluation).
            frozen = self._stack(embedded, mask, enable_dropout=False)
            kwargs["encoder_output"] = jax.lax.stop_gradient(frozen)  # [B, T, H]
        prompt = self.prompt(input_tokens, embedded, task_ids, **kwargs)  # [B, P, H]
        if getattr(self.prompt, "updates_inputs", False):
            prompt, updated = prompt  # ([B, P, H], [B, T, H])
            if updated.shape != embedded.shape:
                raise ValueError(
                    f"The prompt module returned updated inputs of shape {updated.shape}; the "
                    f"encoder needs the embedded inputs' shape {embedded.shape}."
                )
            embedded = updated.astype(embedded.dtype)
        b, _, h = embedded.shape
        if prompt.ndim != 3 or prompt.shape[0] != b or prompt.shape[2] != h:
            raise ValueError(
                f"The prompt module returned shape {prompt.shape}; the encoder needs "
                f"[B={b}, P, H={h}] (broadcast the prompt over the batch)."
            )
        p = prompt.shape[1]
        x = jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1)  # [B, P+T, H]
        x = constrain(x, layers.HIDDEN_AXES)
        prompt_mask = jnp.ones((b, p), bool)  # [B, P]
        if getattr(self.prompt, "has_prompt_mask", False):
            prompt_mask = self.prompt.prompt_mask(task_ids)  # [B, P]
        mask = jnp.concatenate([prompt_mask, mask], axis=1)  # [B, P+T]
        layer_prompt = None
        if getattr(self.prompt, "per_layer", False):
            layer_prompt = lambda i, hidden: self.prompt.layer_prompt(
                i, input_tokens, hidden, task_ids
            )
        return self._stack(x, mask, enable_dropout, layer_prompt), mask

    def _stack(self, x: Array, mask: Array, enable_dropout: bool, layer_prompt=None) -> Array:
        """Runs dropout, the layers and the final norm over embedded inputs `x` `[B, L, H]`."""
        deterministic = not enable_dropout
        x = self.dropout(x, deterministic=deterministic)
        bias = None  # per-layer tables: each layer computes its own
        if self.relpos_bias is not None:
            positions = np.arange(x.shape[1])  # static: the relpos buckets become constants
            bias = self.relpos_bias(positions, positions, bidirectional=True)  # [1, N, L, L]
        pair_mask = layers.attention_mask(mask, mask)  # [B, 1, L, L]
        for i, layer in enumerate(self.layers):
            if layer_prompt is not None and i >= 1:
                replacement = layer_prompt(i, x)  # [B, P, H]
                x = x.at[:, : replacement.shape[1]].set(replacement.astype(x.dtype))
            x = _call_layer(layer, self.config, (x, pair_mask, bias), (enable_dropout,))
        x = self.encoder_norm(x)
        return self.dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
    """The T5 decoder stack and output layer (untied `logits_dense` or the tied embedding).

    In decode mode the decoder keeps `cache/position` (int32 scalar, the next position to write)
    next to each self-attention's cached keys and values; see `prompt_tuning/t5/decoding.py`.
    """

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        encoder_mask: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
    ) -> Array:
        """Decoder logits.

        Args:
          encoded: encoder output `[B, P+T, H]`.
          encoder_mask: `[B, P+T]` bool.
          decoder_input_tokens: `[B, S]` (`[B, 1]` per call once the decode cache exists), or
            `[B*C, S]`: C rows per encoded row (row `b * C + c` decodes from input b), whose
            cross-attention keys and values are then projected once per input.
          decoder_target_tokens: like `decoder_input_tokens`, or None; non-zero positions are
            valid (T5X's `make_decoder_mask`); None treats every position as valid.
          enable_dropout: apply dropout.
          decode: cached one-token decoding.

        Returns:
          float32 logits `[B, S, V]` (`[B*C, S, V]`).

        Raises:
          ValueError: the decoder rows are not a multiple of the encoded rows.
        """
        cfg = self.config
        if decoder_input_tokens.shape[0] % encoded.shape[0]:
            raise ValueError(
                f"The decoder takes C rows per encoded row; got {decoder_input_tokens.shape[0]} "
                f"decoder rows for {encoded.shape[0]} encoded rows (row b*C+c decodes from input "
                "b; see rank_classification.label_batch)."
            )
        deterministic = not enable_dropout
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        shared = not cfg.relative_attention_per_layer
        relpos = _relpos(cfg) if shared else None  # per-layer tables live in the layers
        b, s = decoder_input_tokens.shape
        query_valid = jnp.ones((b, s), bool)  # [B, S]
        position = None
        if decode and self.has_variable("cache", "position"):
            position_var = self.variable("cache", "position", jnp.zeros, (), jnp.int32)
            position = position_var.value
            keys = jnp.arange(self._cache_length())  # [S_max]
            bias = relpos(position[None], keys, bidirectional=False) if shared else None
            # bias: [1, N, 1, S_max]
            self_mask = (keys <= position)[None, None, None, :]  # [1, 1, 1, S_max]
            position_var.value = position + 1
        else:
            if decode:  # First call: create the cache; attend over the full dummy input.
                self.variable("cache", "position", jnp.zeros, (), jnp.int32)
            positions = np.arange(s)  # static: the relpos buckets become constants
            bias = relpos(positions, positions, bidirectional=False) if shared else None
            # bias: [1, N, S, S]
            self_mask = layers.causal_mask(s)  # [1, 1, S, S]
            if decoder_target_tokens is not None:
                query_valid = decoder_target_tokens > 0
                padding = layers.attention_mask(query_valid, query_valid)  # [B, 1, S, S]
                self_mask = jnp.logical_and(self_mask, padding)
        # [B, 1, C*S, T]: each input's C rows as one query sequence (C = 1 but for scoring).
        grouped_valid = query_valid.reshape(encoded.shape[0], -1)
        cross_mask = layers.attention_mask(grouped_valid, encoder_mask)

        x = self.shared_embedding(decoder_input_tokens)  # [B, S, H]
        x = dropout(x, deterministic=deterministic)
        # static: enable_dropout, decode (self is argument 0).
        layer_cls = _layer_class(DecoderLayer, cfg, static_argnums=(6, 7))
        for i in range(cfg.num_decoder_layers):
            x = _call_layer(
                layer_cls(cfg, name=f"layers_{i}"),
                cfg,
                (x, encoded, self_mask, cross_mask, bias),
                (enable_dropout, decode, position),
                decode,
            )
        x = _norm(cfg, "decoder_norm")(x)
        x = dropout(x, deterministic=deterministic)
        if cfg.logits_via_embedding:
            if cfg.scale_tied_logits:
                x = x * jnp.asarray(cfg.emb_dim**-0.5, x.dtype)
            return self.shared_embedding.attend(x)  # [B, S, V]
        dense = layers.Dense(
            cfg.vocab_size,
            ("embed", "vocab"),
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            cfg.dtype,
            cfg.param_dtype,
            output_dtype=jnp.float32,
            name="logits_dense",
        )
        return constrain(dense(x), ("batch", "length", "vocab"))  # [B, S, V] float32

    def _cache_length(self) -> int:
        """The decode length S_max, read from the first self-attention cache."""
        cache = self.variables["cache"]["layers_0"]["self_attention"]
        return cache["cached_key"].shape[1]


def _fit_prompt(prompt: nn.Module, config: T5Config) -> nn.Module:
    """An unbound copy of `prompt`; a per-layer prompt gets the encoder's layer count.

    A per-layer prompt (`per_layer`) with a `num_layers` field left as None is given
    `config.num_encoder_layers`, so `DeepPrompt(length)` needs no layer count of its own.

    Raises:
      ValueError: a per-layer prompt was built for another number of encoder layers.
    """
    overrides = {}
    if getattr(prompt, "per_layer", False) and hasattr(prompt, "num_layers"):
        layers_needed = config.num_encoder_layers
        if prompt.num_layers is None:
            overrides["num_layers"] = layers_needed
        elif prompt.num_layers != layers_needed:
            raise ValueError(
                f"The per-layer prompt {type(prompt).__name__} has num_layers="
                f"{prompt.num_layers} but the encoder has {layers_needed} layers; set num_layers "
                f"to {layers_needed} (NUM_ENCODER_LAYERS) or leave it None to take the model's."
            )
    return prompt.clone(parent=None, name=None, **overrides)


class EncoderDecoder(nn.Module):
    """T5 encoder-decoder over a shared token embedding, with an optional encoder prompt.

    Attributes:
      config: model hyperparameters (`prompt_tuning.t5.config.T5Config`).
      prompt: optional prompt module; its parameters live under `encoder/prompt/`.
    """

    config: T5Config
    prompt: Any = None

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embed(
            cfg.vocab_size, cfg.emb_dim, cfg.dtype, cfg.param_dtype, name="token_embedder"
        )
        prompt = None if self.prompt is None else _fit_prompt(self.prompt, cfg)
        self.encoder = Encoder(cfg, self.token_embedder, prompt, name="encoder")
        self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

    def encode(
        self,
        encoder_input_tokens: Array,
        task_ids: Array | None = None,
        enable_dropout: bool = False,
    ) -> tuple[Array, Array]:
        """Encodes `[B, T]` tokens; returns `(encoded [B, P+T, H], encoder_mask [B, P+T] bool)`."""
        return self.encoder(encoder_input_tokens, task_ids, enable_dropout)

    def decode(
        self,
        encoded: Array,
        encoder_mask: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
    ) -> Array:
        """Float32 logits `[B, S, V]` of the decoder; with `decode=True`, uses the `cache`.

        Args:
          encoded: encoder output `[B, P+T, H]`.
          encoder_mask: `[B, P+T]` bool, True at real (and prompt) positions.
          decoder_input_tokens: `[B, S]` targets shifted right, 0 as the start token (`[B, 1]`
            per call once the decode cache exists).
          decoder_target_tokens: `[B, S]`; its non-zero positions define the decoder padding mask.
          enable_dropout: apply dropout (needs the `dropout` rng).
          decode: cached one-token decoding (mutable `cache` collection).

        Returns:
          `[B, S, V]` float32 logits.
        """
        return self.decoder(
            encoded,
            encoder_mask,
            decoder_input_tokens,
            decoder_target_tokens,
            enable_dropout,
            decode,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        task_ids: Array | None = None,
        enable_dropout: bool = True,
    ) -> Array:
        """Teacher-forced logits `[B, S, V]` (float32) for `[B, T]` inputs and `[B, S]` targets."""
        encoded, encoder_mask = self.encode(encoder_input_tokens, task_ids, enable_dropout)
        return self.decode(
            encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens, enable_dropout
        )
