"""Building blocks of the frozen T5: RMS norm, embedding, attention, MLP, relative positions, masks.

Parameter names and layouts follow T5X/Flaxformer (attention kernels are 2-D `[H, N*K]`), and every
parameter is declared with logical axis names (`vocab, embed, joined_kv, mlp, heads,
relpos_buckets`) so `prompt_tuning/parallel/partitioning.py` can shard it.

Letters: B batch, T key length, S query length, H model dim, N heads, K head dim, F MLP dim,
V vocabulary.

Mixed precision (`dtype=bfloat16`, T5X's `ACTIVATION_DTYPE`): every matmul and einsum takes
operands in `dtype` and accumulates in float32 (`contract`), also in the backward pass, whose
cotangents are cast to `dtype` before their matmuls; hidden states between layers are stored in
`dtype`; layer-norm statistics, attention logits, relative-position biases, the softmax and the
output logits are float32. Parameters keep their storage dtype (`param_dtype`, or FROZEN_DTYPE
for frozen weights) and are cast to `dtype` where they are used.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.t5 import random_init
from prompt_tuning.t5.precision import contract
from prompt_tuning.t5.sharding import constrain

Array = jax.Array
Initializer = Callable[..., Array]

# Additive bias for masked attention logits (as T5X): large enough to vanish after softmax,
# small enough not to overflow float32.
_MASK_BIAS = -1e10

# Logical axes of activations (see sharding.py); constraints act only under a mesh and rules.
HIDDEN_AXES = ("batch", "length", "embed")  # [B, L, H]
_KEYS_T_AXES = ("batch", "heads", "kv", "length")  # cached cross-attention keys [B, N, K, T]
_VALUES_T_AXES = ("batch", "heads", "length", "kv")  # cached cross-attention values [B, N, T, K]
HEADS_AXES = ("batch", "length", "heads", "kv")  # [B, L, N, K]

_ACTIVATIONS = {
    # T5 1.1's gated GELU uses the tanh approximation (transformers' "gelu_new").
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "linear": lambda x: x,
}


def _activation_product(names: Sequence[str]) -> Callable[..., Array]:
    """`(x_0, x_1, ...) -> act_0(x_0) * act_1(x_1) * ...`, recomputed in the backward pass.

    Autodiff of the tanh-approximated GELU keeps half a dozen float32 intermediates of the
    `[B, L, F]` hidden layer for the backward pass, which then reads them all back (on XLA:CPU
    that memory traffic cost more than the MLP's matmuls). Under `jax.checkpoint` only the inputs
    are kept and the backward pass recomputes the elementwise activations, fused with their
    gradient.
    """

    def product(*inputs: Array) -> Array:
        out = None
        for name, x in zip(names, inputs, strict=True):
            y = _ACTIVATIONS[name](x)
            out = y if out is None else out * y
        return out

    return jax.checkpoint(product)


def _dense_spec(ndim: int) -> str:
    """The einsum of a kernel `[D_in, D_out]` applied to the last axis of an `ndim` array."""
    batch = "abcdefgh"[: ndim - 1]
    return f"{batch}y,yz->{batch}z"


def _path(module: nn.Module) -> str:
    """The module's "/"-joined Flax path (its parameters' path), e.g. "encoder/layers_0/mlp"."""
    return "/".join(str(part) for part in getattr(module.scope, "path", ())) or "contract"


def _param(module: nn.Module, name: str, init: Initializer, shape, axes, dtype) -> Array:
    """Declares a parameter with logical axis names; returns the plain (unboxed) array.

    Its initializer is also noted for `random_init` (while a trace records them)."""
    random_init.note((*module.scope.path, name), init, shape, dtype)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    """T5's layer norm: scale by the root mean square, no mean subtraction, no bias.

    Attributes:
      epsilon: added to the mean square before the square root.
      dtype: output dtype; the statistics and the scaling are computed in float32.
      param_dtype: dtype of the `scale` parameter `[H]` (initialised to ones).
    """

    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Normalises the last axis of `x` `[..., H]`; returns the same shape in `dtype`."""
        h = x.shape[-1]
        scale = _param(self, "scale", nn.initializers.ones, (h,), ("embed",), self.param_dtype)
        x = jnp.asarray(x, jnp.float32)
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(mean_square + self.epsilon) * scale.astype(jnp.float32)
        return y.astype(self.dtype)


class Dense(nn.Module):
    """A bias-free linear map `[..., D_in] -> [..., D_out]` with a 2-D `kernel` `[D_in, D_out]`.

    Attributes:
      features: output dimension D_out.
      axes: logical axis names of the kernel, e.g. `("embed", "joined_kv")`.
      kernel_init: initializer of the kernel.
      dtype: operand dtype (input and kernel are cast to it); accumulation is float32.
      param_dtype: storage dtype of the kernel.
      output_dtype: output dtype (None: `dtype`); float32 for the logits.
    """

    features: int
    axes: tuple[str, str]
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    output_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Applies the kernel to `x` `[..., D_in]`; returns `[..., D_out]`."""
        shape = (x.shape[-1], self.features)
        kernel = _param(self, "kernel", self.kernel_init, shape, self.axes, self.param_dtype)
        y = contract(_dense_spec(x.ndim), x, kernel, self.dtype, _path(self))  # [..., D_out] f32
        return y.astype(self.output_dtype or self.dtype)


class Embed(nn.Module):
    """The token embedding `embedding` `[V, H]`; `attend` reuses it as a tied output layer.

    Attributes:
      num_embeddings: vocabulary size V.
      features: model dimension H.
      dtype: dtype of looked-up embeddings.
      param_dtype: storage dtype of the table.
    """

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.embedding = _param(
            self,
            "embedding",
            nn.initializers.normal(stddev=1.0),
            (self.num_embeddings, self.features),
            ("vocab", "embed"),
            self.param_dtype,
        )

    def __call__(self, tokens: Array) -> Array:
        """Looks up `tokens` `[...]` (int); returns `[..., H]`.

        Raises:
          TypeError: when `tokens` are not integers.
        """
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(
                f"Token ids must be integers, got {tokens.dtype}; cast with .astype(int)."
            )
        # Gather, then cast: casting the whole [V, H] table first would cost a pass over it.
        embedded = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)  # [..., H]
        return constrain(embedded, HIDDEN_AXES) if embedded.ndim == 3 else embedded

    def attend(self, x: Array) -> Array:
        """Float32 logits `[..., V]` of hidden states `x` `[..., H]` against the table."""
        batch = "abcdefgh"[: x.ndim - 1]
        logits = contract(f"{batch}y,vy->{batch}v", x, self.embedding, self.dtype, _path(self))
        return constrain(logits, ("batch", "length", "vocab")) if logits.ndim == 3 else logits


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """Maps `key_position - query_position` to T5's relative attention buckets.

    Half the buckets (for one direction) hold exact distances up to `num_buckets // 2`; the rest
    grow logarithmically up to `max_distance`, beyond which distances share the last bucket.
    In the bidirectional case the upper half of the buckets is for keys after the query.

    Args:
      relative_position: int array of `key_position - query_position`, any shape: a NumPy array
        (bucketed by NumPy) or a JAX array (by JAX ops, traced or not).
      bidirectional: encoder (True) or causal decoder (False) bucketing.
      num_buckets: total number of buckets.
      max_distance: distance from which all positions share the last bucket.

    Returns:
      int32 bucket ids with the shape of `relative_position`, of its array type.
    """
    # NumPy positions (the static case: training, scoring, a decoder's first pass) are bucketed
    # by NumPy, so no XLA program is compiled for these few integer ops of each [S, T] shape.
    xp = np if isinstance(relative_position, np.ndarray) else jnp
    relative_position = xp.asarray(relative_position, np.int32)
    buckets = xp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(np.int32) * num_buckets
        distance = xp.abs(relative_position)
    else:
        distance = -xp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 as Mesh TensorFlow / transformers compute it; log of 0 is masked by `is_small`.
    ratio = xp.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
    log_scale = np.float32(math.log(max_distance / max_exact))
    large = max_exact + (xp.log(ratio) / log_scale * np.float32(num_buckets - max_exact)).astype(
        np.int32
    )
    large = xp.minimum(large, num_buckets - 1)
    return buckets + xp.where(is_small, distance, large)


class RelativePositionBiases(nn.Module):
    """One relative position bias table `rel_embedding` `[N, buckets]` shared by a stack's layers.

    Attributes:
      num_buckets: relative position buckets.
      max_distance: distance from which positions share the last bucket.
      num_heads: attention heads N.
      dtype: the model's activation dtype (unused: the bias is added to float32 logits, so it is
        always float32).
      param_dtype: storage dtype of the table.
    """

    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array, bidirectional: bool) -> Array:
        """Float32 attention bias `[1, N, S, T]` for query positions `[S]` and keys `[T]`."""
        table = _param(
            self,
            "rel_embedding",
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (self.num_heads, self.num_buckets),
            ("heads", "relpos_buckets"),
            self.param_dtype,
        )
        # NumPy positions (training, scoring: the callers' static `np.arange`) are bucketed by NumPy
        # while tracing and become a constant; traced ones (a decoding step's position) make XLA
        # fuse the bucket arithmetic (with its log) into every layer's attention.
        relative = key_positions[None, :] - query_positions[:, None]  # [S, T]
        buckets = relative_position_bucket(
            relative, bidirectional, self.num_buckets, self.max_distance
        )
        bias = jnp.take(table.astype(jnp.float32), buckets, axis=1)  # [N, S, T]
        return bias[None]  # [1, N, S, T]


class MultiHeadAttention(nn.Module):
    """T5 multi-head attention: no logit scaling, no biases, optional autoregressive cache.

    The query/key/value kernels are `[H, N*K]` and the output kernel `[N*K, H]` (Flaxformer
    layout). T5 does not divide logits by sqrt(K); the factor is folded into the query init.

    With `decode=True` the module keeps `cached_key` and `cached_value` in the `cache` collection.
    Self-attention (`cross_attention=False`): the first call (cache absent) creates them as zeros
    `[B, S_max, N, K]` sized by its full-length input and attends normally; every later call takes
    one token `[B, 1, H]`, writes its key/value at `decode_position` and attends over the whole
    cache (the caller's mask hides positions not yet written). Cross-attention
    (`cross_attention=True`): the first call stores the projected encoder keys as `[B, N, K, T]`
    and values as `[B, N, T, K]`; later calls reuse them instead of projecting the encoder output
    again.

    Attributes:
      num_heads: N.
      head_dim: K.
      dropout_rate: dropout on attention weights.
      cross_attention: keys/values come from the encoder (changes what decode mode caches).
      dtype: operand dtype of the projections and both attention einsums (float32
        accumulation); the logits, bias, mask and softmax are float32.
      param_dtype: storage dtype of the kernels.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _dense(self, name: str, features: int, axes, init: Initializer) -> Dense:
        return Dense(features, axes, init, self.dtype, self.param_dtype, name=name)

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Array | None = None,
        bias: Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
        decode_position: Array | None = None,
    ) -> Array:
        """Attends from `inputs_q` `[B, S, H]` to `inputs_kv` `[B, T, H]`.

        Args:
          inputs_q: queries `[B, S, H]`.
          inputs_kv: keys/values `[B, T, H]`.
          mask: bool/0-1 `[B or 1, 1, S, T]`, True where attention is allowed.
          bias: additive logits bias `[B or 1, N, S, T]` (relative positions).
          enable_dropout: apply dropout to the attention weights.
          decode: use and update the `cache` collection (see the class docstring).
          decode_position: int scalar, the position of the single query token in decode mode
            (self-attention).

        Returns:
          `[B, S, H]` in `dtype`.
        """
        h, joined = inputs_q.shape[-1], self.num_heads * self.head_dim
        # Constrained inputs make each layer's input gradient H-sharded too (a cross-attention's
        # gradient w.r.t. the encoder output is summed over all decoder layers).
        inputs_q, inputs_kv = constrain(inputs_q, HIDDEN_AXES), constrain(inputs_kv, HIDDEN_AXES)
        base = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        query_init = lambda key, shape, dtype: base(key, shape, dtype) / math.sqrt(self.head_dim)
        in_axes, out_axes = ("embed", "joined_kv"), ("joined_kv", "embed")
        split = (
            lambda x: constrain(  # [B, L, N, K]
                x.reshape(x.shape[:2] + (self.num_heads, self.head_dim)), HEADS_AXES
            )
        )
        query = split(self._dense("query", joined, in_axes, query_init)(inputs_q))
        project = lambda name: split(self._dense(name, joined, in_axes, base)(inputs_kv))

        # Key/value layouts: [B, T, N, K] as projected; a decoder step's cross-attention reads
        # them from the cache as [B, N, K, T] and [B, N, T, K], the layouts its dots take as they
        # are (the cache is a loop carry, so XLA cannot hoist a transpose of it out of the loop).
        key_axes, value_axes = "btnk", "btnk"
        if decode and self.cross_attention:
            key, value = self._cached_projections(project)
            key_axes, value_axes = "bnkt", "bntk"
        else:
            key, value = project("key"), project("value")
            if decode:
                key, value = self._update_cache(key, value, decode_position)

        name = _path(self)
        logits = contract(f"bsnk,{key_axes}->bnst", query, key, self.dtype, f"{name}/scores")
        # logits: [B, N, S, T] float32
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, _MASK_BIAS)
        weights = jax.nn.softmax(logits, axis=-1)  # [B, N, S, T] float32
        # One mask per key position, shared by all queries (T5X's `dropout_shape[-2] = 1`).
        # float32 into `contract`: the gradient of the weights stays float32 (see there).
        weights = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            weights, deterministic=not enable_dropout
        )
        out = contract(f"bnst,{value_axes}->bsnk", weights, value, self.dtype, f"{name}/values")
        # out: [B, S, N, K] float32
        out = out.reshape(out.shape[:2] + (joined,))  # [B, S, N*K]
        out = constrain(out, ("batch", "length", "joined_kv"))
        return constrain(self._dense("out", h, out_axes, base)(out), HIDDEN_AXES)

    def _cached_projections(self, project: Callable[[str], Array]) -> tuple[Array, Array]:
        """Cross-attention keys `[B, N, K, T]` and values `[B, N, T, K]`: projected on the first
        call, then cached in these layouts (transposed once, not at every decoder step)."""
        if self.has_variable("cache", "cached_key"):
            cache = self.variables["cache"]
            return cache["cached_key"], cache["cached_value"]
        key = constrain(jnp.transpose(project("key"), (0, 2, 3, 1)), _KEYS_T_AXES)
        value = constrain(jnp.transpose(project("value"), (0, 2, 1, 3)), _VALUES_T_AXES)
        self.variable("cache", "cached_key", lambda: key)
        self.variable("cache", "cached_value", lambda: value)
        return key, value

    def _update_cache(self, key: Array, value: Array, position: Array | None):
        """Creates the cache on the first call; later writes one step and returns the full cache."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not initialized:
            return key, value
        if key.shape[1] != 1:
            raise ValueError(
                f"Decoding takes one token per call, got {key.shape[1]}; initialise the cache with "
                "the full-length decoder input first (see prompt_tuning/t5/decoding.py)."
            )
        if position is None:
            raise ValueError("decode=True needs `decode_position` once the cache exists.")
        start = (0, position, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
        cached_key.value = constrain(cached_key.value, HEADS_AXES)
        cached_value.value = constrain(cached_value.value, HEADS_AXES)
        return cached_key.value, cached_value.value


class MlpBlock(nn.Module):
    """T5's MLP: per-activation input kernels (`wi` or `wi_0`, `wi_1`), multiplied, then `wo`.

    Attributes:
      mlp_dim: hidden size F.
      activations: ("gelu", "linear") for T5 1.1's gated GELU; ("relu",) for original T5.
      dropout_rate: dropout on the hidden activations.
      dtype: computation dtype.
      param_dtype: storage dtype of the kernels.
    """

    mlp_dim: int
    activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, enable_dropout: bool = False) -> Array:
        """Maps `x` `[B, L, H]` to `[B, L, H]`.

        Raises:
          ValueError: when an activation name is unknown.
        """
        h = x.shape[-1]
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        inputs = []
        for i, name in enumerate(self.activations):
            if name not in _ACTIVATIONS:
                raise ValueError(
                    f"Unknown MLP activation {name!r}; use one of {sorted(_ACTIVATIONS)}."
                )
            dense_name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            # float32 out of the accumulator: the activation runs in float32 (XLA:CPU's bfloat16
            # transcendentals are several times slower), the product is cast once.
            wi = Dense(
                self.mlp_dim,
                ("embed", "mlp"),
                init,
                self.dtype,
                self.param_dtype,
                output_dtype=jnp.float32,
                name=dense_name,
            )
            inputs.append(wi(x))  # [B, L, F] float32
        hidden = _activation_product(tuple(self.activations))(*inputs)
        # Stays float32 into `wo`, whose matmul casts it (and returns a float32 gradient).
        hidden = constrain(hidden, ("batch", "length", "mlp"))  # [B, L, F]
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=not enable_dropout
        )
        wo = Dense(h, ("mlp", "embed"), init, self.dtype, self.param_dtype, name="wo")
        return constrain(wo(hidden), HIDDEN_AXES)


def attention_mask(query_valid: Array, key_valid: Array) -> Array:
    """Pairwise mask `[B, 1, S, T]` from per-position validity `[B, S]` and `[B, T]`."""
    return jnp.logical_and(query_valid[:, None, :, None], key_valid[:, None, None, :])


def causal_mask(length: int) -> Array:
    """Lower-triangular mask `[1, 1, S, S]`: query i sees keys j <= i."""
    positions = jnp.arange(length)
    return (positions[None, :] <= positions[:, None])[None, None]
