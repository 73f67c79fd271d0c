"""What every checkpoint format shares: errors, flat trees, the T5 tree's shapes, array readers,
atomic writes.

The format modules (`hf_format`, `t5x_format`) and `checkpoints` import this leaf module, never each
other's internals, so there is no import circle.

An `ArrayReader` is one stored parameter that can be read in slices: `shape`, `dtype` (as stored)
and `read(index)` for a tuple of slices (what `jax.make_array_from_callback` asks for), so a host
reads only the part of an array its devices hold.
"""

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from prompt_tuning.t5.config import T5Config

Params = dict[str, Any]
# Layer-norm names of an encoder and a decoder layer.
_ENCODER_NORMS = ("pre_attention_layer_norm", "pre_mlp_layer_norm")
_DECODER_NORMS = (
    "pre_self_attention_layer_norm",
    "pre_cross_attention_layer_norm",
    "pre_mlp_layer_norm",
)
_GATED = ("gelu", "linear")
_RELU = ("relu",)
Index = tuple[slice, ...]


class CheckpointError(ValueError):
    """A checkpoint is missing, unrecognisable, corrupt, or does not fit the requested config."""


class MissingParameterError(CheckpointError, KeyError):
    """A checkpoint has no parameter of the requested name."""

    def __str__(self) -> str:  # KeyError would print the message quoted.
        return str(self.args[0])


class ArrayReader(Protocol):
    """One stored parameter, readable in slices (in our layout: transposes already undone)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, index: Index | None = None) -> np.ndarray:
        """The array's `index` slice (None or `()`: all of it), in the stored dtype."""


@dataclasses.dataclass
class InMemoryReader:
    """A parameter already in memory (inline msgpack values, torch tensors)."""

    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def read(self, index: Index | None = None) -> np.ndarray:
        return np.asarray(self.array if not index else self.array[index])


def dtype_for(dtype: Any, name: str) -> Any:
    """The dtype to load parameter `name` in: `dtype[name]` when `dtype` maps "/"-joined names to
    dtypes (a name it lacks, or None: as stored), else `dtype` itself (None: as stored)."""
    if isinstance(dtype, Mapping):
        return dtype.get(name)
    return dtype


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts into `{"a/b/c": leaf}`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> Params:
    """Inverse of `flatten`: `{"a/b": x}` -> `{"a": {"b": x}}` (plain dicts)."""
    tree: Params = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def plain_arrays(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flattens parameters for writing: flax boxes unboxed, every leaf a numeric numpy array.

    Raises:
      CheckpointError: a leaf is not an array of numbers (names it).
    """
    from flax.core import meta  # noqa: PLC0415

    flat = {}
    for name, value in flatten(meta.unbox(params)).items():
        array = np.asarray(value)
        if array.dtype == object:
            raise CheckpointError(
                f"Parameter {name} is a {type(value).__name__}, not an array; pass plain arrays "
                "(e.g. `flax.linen.unbox(params)`)."
            )
        flat[name] = array
    return flat


def cast(array: Any, dtype: Any) -> np.ndarray:
    """Returns `array` as a numpy array, cast to `dtype` when given."""
    array = np.asarray(array)
    return array if dtype is None else array.astype(dtype)


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Runs `write(tmp_dir)` on a fresh folder beside `path`, then renames it to `path`.

    Args:
      path: the local folder to create.
      write: fills the temporary folder it is given.

    Raises:
      CheckpointError: `path` already exists (nothing is overwritten).
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise CheckpointError(f"{path} already exists; choose a new folder or delete it first.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        write(tmp)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------
# The T5 tree's names and shapes.


def _attention_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    h, joined = config.emb_dim, config.num_heads * config.head_dim
    shapes = {f"{name}/kernel": (h, joined) for name in ("query", "key", "value")}
    shapes["out/kernel"] = (joined, h)
    return shapes


def _mlp_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    h, f = config.emb_dim, config.mlp_dim
    if len(config.mlp_activations) == 1:
        shapes = {"wi/kernel": (h, f)}
    else:
        shapes = {f"wi_{i}/kernel": (h, f) for i in range(len(config.mlp_activations))}
    shapes["wo/kernel"] = (f, h)
    return shapes


def expected_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """The frozen model's parameter names (joined by `/`) and shapes for `config`.

    Args:
      config: the model configuration.

    Returns:
      `{"token_embedder/embedding": (V, H), "encoder/layers_0/attention/query/kernel": (H, N*K),
      ...}` for every parameter of `EncoderDecoder(config)` without a prompt (DESIGN.md's tree);
      with `relative_attention_per_layer` the tables are `{encoder,decoder}/layers_i/relpos_bias/
      rel_embedding` instead of `{encoder,decoder}/relpos_bias/rel_embedding`.
    """
    h = config.emb_dim
    relpos = (config.num_heads, config.relative_attention_num_buckets)
    per_layer = config.relative_attention_per_layer
    shapes = {"token_embedder/embedding": (config.vocab_size, h)}
    attention, mlp = _attention_shapes(config), _mlp_shapes(config)
    for i in range(config.num_encoder_layers):
        prefix = f"encoder/layers_{i}"
        shapes.update({f"{prefix}/{norm}/scale": (h,) for norm in _ENCODER_NORMS})
        shapes.update({f"{prefix}/attention/{k}": v for k, v in attention.items()})
        shapes.update({f"{prefix}/mlp/{k}": v for k, v in mlp.items()})
        if per_layer:
            shapes[f"{prefix}/relpos_bias/rel_embedding"] = relpos
    shapes["encoder/encoder_norm/scale"] = (h,)
    if not per_layer:
        shapes["encoder/relpos_bias/rel_embedding"] = relpos
    for i in range(config.num_decoder_layers):
        prefix = f"decoder/layers_{i}"
        shapes.update({f"{prefix}/{norm}/scale": (h,) for norm in _DECODER_NORMS})
        for block in ("self_attention", "encoder_decoder_attention"):
            shapes.update({f"{prefix}/{block}/{k}": v for k, v in attention.items()})
        shapes.update({f"{prefix}/mlp/{k}": v for k, v in mlp.items()})
        if per_layer:
            shapes[f"{prefix}/relpos_bias/rel_embedding"] = relpos
    shapes["decoder/decoder_norm/scale"] = (h,)
    if not per_layer:
        shapes["decoder/relpos_bias/rel_embedding"] = relpos
    if not config.logits_via_embedding:
        shapes["decoder/logits_dense/kernel"] = (h, config.vocab_size)
    return shapes


def _count_layers(names: set[str], stack: str) -> int:
    indices = {
        int(n.split("/")[1][len("layers_") :]) for n in names if n.startswith(f"{stack}/layers_")
    }
    if indices != set(range(len(indices))):
        raise CheckpointError(
            f"The {stack} layers of the checkpoint are not numbered 0..L-1 (found"
            f" {sorted(indices)}); the checkpoint is incomplete."
        )
    return len(indices)


def infer_config(shapes: Mapping[str, tuple[int, ...]], **hints: Any) -> T5Config:
    """Infers a `T5Config` from a flat `{name: shape}` map in the T5X layout.

    V and H come from the embedding, N*K from the encoder's first query kernel, N and the number
    of buckets from `encoder/relpos_bias/rel_embedding [N, buckets]` (or, one table per layer as
    in UMT5, `encoder/layers_0/relpos_bias/rel_embedding`; so K = N*K / N needs no assumption),
    F from `mlp/wo`, the layer counts from `layers_i`, the MLP from `wi_0`/`wi_1`
    (gated GELU, T5 1.1) or `wi` (ReLU, original T5), tying from `decoder/logits_dense`.
    Tied logits are taken as scaled (T5X and original T5). Things shapes cannot tell
    (`relative_attention_max_distance`, epsilon, dropout, dtypes) keep `T5Config`'s defaults
    unless given in `hints`.

    Args:
      shapes: parameter name -> shape, names as in `expected_shapes`.
      **hints: `T5Config` fields that override the inferred values.

    Returns:
      The inferred config.

    Raises:
      CheckpointError: a parameter needed for the inference is missing.
    """
    per_layer = "encoder/layers_0/relpos_bias/rel_embedding" in shapes
    relpos = f"encoder/{'layers_0/' if per_layer else ''}relpos_bias/rel_embedding"
    required = (
        "token_embedder/embedding",
        "encoder/layers_0/attention/query/kernel",
        "encoder/layers_0/mlp/wo/kernel",
        relpos,
    )
    missing = [name for name in required if name not in shapes]
    if missing:
        raise CheckpointError(
            f"Cannot infer a T5 config: the checkpoint lacks {missing}. Is it a T5 encoder-decoder"
            " with T5X parameter names?"
        )
    vocab, h = shapes["token_embedder/embedding"]
    joined = shapes["encoder/layers_0/attention/query/kernel"][1]
    heads, buckets = shapes[relpos]
    names = set(shapes)
    gated = "encoder/layers_0/mlp/wi_0/kernel" in names
    tied = "decoder/logits_dense/kernel" not in names
    inferred = dict(
        vocab_size=vocab,
        emb_dim=h,
        num_heads=heads,
        head_dim=joined // heads,
        mlp_dim=shapes["encoder/layers_0/mlp/wo/kernel"][0],
        num_encoder_layers=_count_layers(names, "encoder"),
        num_decoder_layers=_count_layers(names, "decoder"),
        mlp_activations=_GATED if gated else _RELU,
        logits_via_embedding=tied,
        scale_tied_logits=True,
        relative_attention_num_buckets=buckets,
        relative_attention_per_layer=per_layer,
    )
    inferred.update(hints)
    return T5Config(**inferred)


PROMPT_SCOPE = "encoder/prompt/"


def check_shapes(shapes: Mapping[str, tuple[int, ...]], config: T5Config) -> None:
    """Checks that a checkpoint's parameters are exactly those of `EncoderDecoder(config)`.

    Args:
      shapes: parameter name -> shape of the loaded checkpoint.
      config: the configuration the parameters must fit.

    Raises:
      CheckpointError: naming the first parameter whose shape differs (with both shapes), or the
        parameters that are missing or unexpected. Prompt parameters (under `encoder/prompt/`) are
        allowed beside the model's.
    """
    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name in shapes and tuple(shapes[name]) != tuple(shape):
            raise CheckpointError(
                f"Parameter {name} has shape {tuple(shapes[name])} in the checkpoint but the config"
                f" needs {tuple(shape)}. Pass the config the checkpoint was trained with (or"
                " config=None to infer it)."
            )
    missing = sorted(set(expected) - set(shapes))
    # A prompt-tuned checkpoint also holds its prompt (`encoder/prompt/...`): kept, not an error.
    unexpected = sorted(n for n in set(shapes) - set(expected) if not n.startswith(PROMPT_SCOPE))
    if missing or unexpected:
        raise CheckpointError(
            f"The checkpoint's parameters do not match the config: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. Check the layer counts, the MLP kind"
            " (mlp_activations) and logits_via_embedding of the config."
        )


# Fields that shape the function a checkpoint computes (not dropout, dtypes or remat).
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "emb_dim",
    "num_heads",
    "head_dim",
    "mlp_dim",
    "num_encoder_layers",
    "num_decoder_layers",
    "mlp_activations",
    "logits_via_embedding",
    "scale_tied_logits",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "relative_attention_per_layer",
    "layer_norm_epsilon",
)
# What a T5X checkpoint's shapes tell (`infer_config`); the rest only a config.json states.
SHAPE_FIELDS = (
    "vocab_size",
    "emb_dim",
    "num_heads",
    "head_dim",
    "mlp_dim",
    "num_encoder_layers",
    "num_decoder_layers",
    "logits_via_embedding",
    "relative_attention_num_buckets",
    "relative_attention_per_layer",
)


def check_same_architecture(
    config: T5Config, found: T5Config, where: str, fields: tuple[str, ...] = ARCHITECTURE_FIELDS
) -> None:
    """Checks that a model's config and a checkpoint's config describe the same network.

    Args:
      config: the model's config (a gin model file's `T5Config`).
      found: the checkpoint's (its `config.json`, or inferred from its shapes).
      where: the checkpoint, for the message (e.g. "the Hugging Face folder /x (config.json)").
      fields: the fields to compare (`SHAPE_FIELDS` for a config inferred from shapes).

    Raises:
      CheckpointError: naming the first differing field and both values.
    """
    for field in fields:
        if field == "scale_tied_logits" and not config.logits_via_embedding:
            continue  # Untied logits are never scaled; the field does not matter.
        mine, theirs = getattr(config, field), getattr(found, field)
        if field == "mlp_activations":
            mine, theirs = tuple(mine), tuple(theirs)
        if mine != theirs:
            raise CheckpointError(
                f"The model's T5Config.{field} is {mine!r} but {where} has {field}={theirs!r}. "
                "Use the model gin file matching the checkpoint (gin_configs/models/), or "
                "gin_configs/models/from_checkpoint.gin to take the architecture from it."
            )
