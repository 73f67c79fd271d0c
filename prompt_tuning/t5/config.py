"""The frozen T5 configuration: one dataclass, presets override fields only.

Sizes follow the public checkpoints: T5 1.1 (and LM-adapted), original T5, and the families built
on T5 1.1's architecture (T5X's gin files `t5x/examples/t5/{t5_1_1,mt5,byt5}/*.gin` and
`t5x/examples/scalable_t5/{mt5,umt5}/*.gin`, and transformers' published `config.json`s):

- Flan-T5: T5 1.1's sizes and vocabulary.
- mT5: T5 1.1's sizes with a 250,112-row embedding (mc4.250000.100extra SentencePiece).
- ByT5: 384 rows (seqio's byte vocabulary, padded) and an encoder 3x deeper than the decoder.
- UMT5: mT5's sizes, 256,384 rows (umt5.256000 SentencePiece, 300 extra ids) and a relative
  position bias in every layer (`relative_attention_per_layer`), as T5X's scalable_t5 builds it.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

# Letters: V vocabulary, H model dim (emb_dim), N heads, K head dim, F MLP dim.
_T5_1_1_SIZES = {
    #        H,     F,    N,  K,  layers
    "small": (512, 1024, 6, 64, 8),
    "base": (768, 2048, 12, 64, 12),
    "large": (1024, 2816, 16, 64, 24),
    "xl": (2048, 5120, 32, 64, 24),
    "xxl": (4096, 10240, 64, 64, 24),
}
_T5_ORIGINAL_SIZES = {
    "small": (512, 2048, 8, 64, 6),
    "base": (768, 3072, 12, 64, 12),
    "large": (1024, 4096, 16, 64, 24),
    "3b": (1024, 16384, 32, 128, 24),
    "11b": (1024, 65536, 128, 128, 24),
}


# ByT5 (T5X's t5x/examples/t5/byt5/*.gin): H, F, N, K, encoder layers, decoder layers.
_BYT5_SIZES = {
    "small": (1472, 3584, 6, 64, 12, 4),
    "base": (1536, 3968, 12, 64, 18, 6),
    "large": (1536, 3840, 16, 64, 36, 12),
    "xl": (2560, 6720, 32, 64, 36, 12),
    "xxl": (4672, 12352, 64, 64, 36, 12),
}
MT5_VOCAB_SIZE = 250112  # mc4.250000.100extra: 250,100 ids, padded to a multiple of 128.
BYT5_VOCAB_SIZE = 384  # seqio.ByteVocabulary: 3 special ids + 256 bytes (+ 125 unused), padded.
UMT5_VOCAB_SIZE = 256384  # umt5.256000 with 300 extra ids (T5X's scalable_t5/umt5/vocab.gin).

_FLOAT_DTYPES = tuple(jnp.dtype(t) for t in (jnp.float32, jnp.bfloat16, jnp.float16))


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of a T5 encoder-decoder.

    Attributes:
      vocab_size: rows of the token embedding (V); T5 pads 32,100 ids to 32,128.
      emb_dim: model dimension (H).
      num_heads: attention heads (N).
      num_encoder_layers: encoder blocks.
      num_decoder_layers: decoder blocks.
      head_dim: dimension per head (K); attention kernels are [H, N*K].
      mlp_dim: hidden size of the MLP (F).
      mlp_activations: ("gelu", "linear") is T5 1.1's gated GELU (`wi_0`, `wi_1`); ("relu",) is the
        original T5 MLP (`wi`).
      dropout_rate: dropout on embeddings, sublayer outputs and attention weights.
      logits_via_embedding: tie the output layer to `token_embedder` (original T5) instead of
        `decoder/logits_dense` (T5 1.1).
      scale_tied_logits: with tied logits, scale the decoder output by emb_dim**-0.5 (original T5
        and T5X do; checkpoints written by transformers 5.x for T5 1.1 do not).
      relative_attention_num_buckets: relative position buckets per stack.
      relative_attention_max_distance: distance beyond which positions share the last bucket.
      relative_attention_per_layer: every layer has its own relative position table
        (`layers_i/relpos_bias/rel_embedding`, UMT5 and T5X's scalable_t5) instead of one per stack
        shared by its layers (`encoder/relpos_bias`, `decoder/relpos_bias`, T5 and T5 1.1).
      layer_norm_epsilon: RMS norm epsilon.
      dtype: activation dtype, "float32" or "bfloat16" (T5X's ACTIVATION_DTYPE; a name or a
        dtype). bfloat16 is mixed precision: matmul and einsum operands in bfloat16 with float32
        accumulation, hidden states stored in bfloat16, layer-norm statistics, attention logits
        and softmax, the output logits and the loss in float32 (see `prompt_tuning.t5.layers`).
      param_dtype: dtype parameters are created and stored in (frozen weights can be stored in
        bfloat16 with FROZEN_DTYPE instead; prompts stay float32).
      remat_policy: rematerialise each layer's activations in the backward pass to save memory:
        "none", "full" (recompute everything) or "dots" (keep matmul outputs without batch
        dimensions, recompute the rest). Parameters and results are unchanged.
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    dropout_rate: float = 0.0
    logits_via_embedding: bool = False
    scale_tied_logits: bool = True
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    relative_attention_per_layer: bool = False
    layer_norm_epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"

    def __post_init__(self):
        for field in ("dtype", "param_dtype"):
            value = getattr(self, field)
            try:
                dtype = jnp.dtype(value)
            except TypeError as error:
                raise ValueError(
                    f"T5Config.{field}={value!r} is not a dtype; use 'float32' or 'bfloat16' "
                    "(the gin macro ACTIVATION_DTYPE sets `dtype`)."
                ) from error
            if dtype not in _FLOAT_DTYPES:
                raise ValueError(
                    f"T5Config.{field}={value!r} is not supported; use 'float32', 'bfloat16' or "
                    "'float16' (the gin macro ACTIVATION_DTYPE sets `dtype`)."
                )
            object.__setattr__(self, field, dtype)

    def replace(self, **changes) -> "T5Config":
        """Returns a copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def t5_1_1(size: str = "small", **overrides) -> T5Config:
    """T5 1.1 / LM-adapted T5 of a named size ("small", "base", "large", "xl", "xxl")."""
    if size not in _T5_1_1_SIZES:
        raise ValueError(f"Unknown T5 1.1 size {size!r}; choose one of {sorted(_T5_1_1_SIZES)}.")
    h, f, n, k, layers = _T5_1_1_SIZES[size]
    config = T5Config(
        emb_dim=h,
        mlp_dim=f,
        num_heads=n,
        head_dim=k,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
    )
    return config.replace(**overrides)


def t5_original(size: str = "small", **overrides) -> T5Config:
    """Original T5 ("small", "base", "large", "3b", "11b"): ReLU MLP, tied and scaled logits."""
    if size not in _T5_ORIGINAL_SIZES:
        raise ValueError(f"Unknown T5 size {size!r}; choose one of {sorted(_T5_ORIGINAL_SIZES)}.")
    h, f, n, k, layers = _T5_ORIGINAL_SIZES[size]
    config = T5Config(
        emb_dim=h,
        mlp_dim=f,
        num_heads=n,
        head_dim=k,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        mlp_activations=("relu",),
        logits_via_embedding=True,
        scale_tied_logits=True,
    )
    return config.replace(**overrides)


def flan_t5(size: str = "small", **overrides) -> T5Config:
    """Flan-T5 ("small" ... "xxl"): T5 1.1 (LM-adapted) instruction-finetuned, same architecture."""
    return t5_1_1(size, **overrides)


def mt5(size: str = "small", **overrides) -> T5Config:
    """mT5 ("small" ... "xxl"): T5 1.1's sizes with mT5's 250,112-row embedding."""
    return t5_1_1(size, vocab_size=MT5_VOCAB_SIZE).replace(**overrides)


def umt5(size: str = "small", **overrides) -> T5Config:
    """UMT5 ("small" ... "xxl"): mT5's sizes, a 256,384-row embedding, a bias table per layer."""
    config = t5_1_1(size, vocab_size=UMT5_VOCAB_SIZE, relative_attention_per_layer=True)
    return config.replace(**overrides)


def byt5(size: str = "small", **overrides) -> T5Config:
    """ByT5 ("small" ... "xxl"): 384 rows (bytes), an encoder 3x deeper than the decoder."""
    if size not in _BYT5_SIZES:
        raise ValueError(f"Unknown ByT5 size {size!r}; choose one of {sorted(_BYT5_SIZES)}.")
    h, f, n, k, encoder_layers, decoder_layers = _BYT5_SIZES[size]
    config = T5Config(
        vocab_size=BYT5_VOCAB_SIZE,
        emb_dim=h,
        mlp_dim=f,
        num_heads=n,
        head_dim=k,
        num_encoder_layers=encoder_layers,
        num_decoder_layers=decoder_layers,
    )
    return config.replace(**overrides)


def tiny(**overrides) -> T5Config:
    """A T5 1.1-shaped model small enough for unit tests (H=32, 2+2 layers, V=128)."""
    config = T5Config(
        vocab_size=128,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
    )
    return config.replace(**overrides)


def by_size(size: str, **overrides) -> T5Config:
    """T5 1.1 of a named size ("small" ... "xxl"), or "tiny" (`tiny`, the unit-test model)."""
    return tiny(**overrides) if size == "tiny" else t5_1_1(size, **overrides)


def num_params(config: T5Config) -> int:
    """Counts the parameters of the frozen model a config describes (no prompt)."""
    h, f = config.emb_dim, config.mlp_dim
    joined = config.num_heads * config.head_dim
    attention = 4 * h * joined
    mlp = (len(config.mlp_activations) + 1) * h * f
    relpos = config.num_heads * config.relative_attention_num_buckets
    per_layer, per_stack = (relpos, 0) if config.relative_attention_per_layer else (0, relpos)
    encoder = config.num_encoder_layers * (attention + mlp + 2 * h + per_layer) + h + per_stack
    decoder = config.num_decoder_layers * (2 * attention + mlp + 3 * h + per_layer) + h + per_stack
    embeddings = config.vocab_size * h * (1 if config.logits_via_embedding else 2)
    return embeddings + encoder + decoder
