"""Checkpoint I/O for the frozen T5: detect a checkpoint's format, load it, check it.

`load_checkpoint` reads three layouts into one parameter tree (the T5X/Flaxformer names of
docs/DESIGN.md, no `target` level) and a `T5Config`:

- a Hugging Face folder (`config.json` + `model.safetensors`, a sharded
  `model.safetensors.index.json`, or `pytorch_model.bin`): see `hf_format`;
- a legacy T5X checkpoint folder (`checkpoint_N/` holding the msgpack file `checkpoint` and one
  zarr array per large parameter): see `t5x_format`;
- an orbax / new T5X checkpoint (OCDBT: `manifest.ocdbt`, `_METADATA`, possibly under a
  `state/`, `params/` or `default/` item folder): see `t5x_format`.

HF folders must be local; T5X folders may also be `gs://` paths. torch, tensorstore, orbax and
TensorFlow are imported only when the format at hand needs them.

Loaded parameters are host `numpy` arrays in nested plain dicts; the caller places them on devices
(e.g. with `jax.device_put` and the shardings from `partitioning.py`).

Letters: V vocabulary, H model dim, N heads, K head dim, F MLP dim.
"""

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

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


class CheckpointError(ValueError):
    """A checkpoint is missing, unrecognisable, corrupt, or does not fit the requested config."""


class MissingParameterError(CheckpointError, KeyError):
    """A checkpoint has no parameter of the requested name."""

    def __str__(self) -> str:  # KeyError would print the message quoted.
        return str(self.args[0])


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
      ...}` for every parameter of `EncoderDecoder(config)` without a prompt (DESIGN.md's tree).
    """
    h = config.emb_dim
    relpos = (config.num_heads, config.relative_attention_num_buckets)
    shapes = {"token_embedder/embedding": (config.vocab_size, h)}
    attention, mlp = _attention_shapes(config), _mlp_shapes(config)
    for i in range(config.num_encoder_layers):
        prefix = f"encoder/layers_{i}"
        shapes.update({f"{prefix}/{norm}/scale": (h,) for norm in _ENCODER_NORMS})
        shapes.update({f"{prefix}/attention/{k}": v for k, v in attention.items()})
        shapes.update({f"{prefix}/mlp/{k}": v for k, v in mlp.items()})
    shapes["encoder/encoder_norm/scale"] = (h,)
    shapes["encoder/relpos_bias/rel_embedding"] = relpos
    for i in range(config.num_decoder_layers):
        prefix = f"decoder/layers_{i}"
        shapes.update({f"{prefix}/{norm}/scale": (h,) for norm in _DECODER_NORMS})
        for block in ("self_attention", "encoder_decoder_attention"):
            shapes.update({f"{prefix}/{block}/{k}": v for k, v in attention.items()})
        shapes.update({f"{prefix}/mlp/{k}": v for k, v in mlp.items()})
    shapes["decoder/decoder_norm/scale"] = (h,)
    shapes["decoder/relpos_bias/rel_embedding"] = relpos
    if not config.logits_via_embedding:
        shapes["decoder/logits_dense/kernel"] = (h, config.vocab_size)
    return shapes


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
    of buckets from `encoder/relpos_bias/rel_embedding [N, buckets]` (so K = N*K / N needs no
    assumption), F from `mlp/wo`, the layer counts from `layers_i`, the MLP from `wi_0`/`wi_1`
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
    required = (
        "token_embedder/embedding",
        "encoder/layers_0/attention/query/kernel",
        "encoder/layers_0/mlp/wo/kernel",
        "encoder/relpos_bias/rel_embedding",
    )
    missing = [name for name in required if name not in shapes]
    if missing:
        raise CheckpointError(
            f"Cannot infer a T5 config: the checkpoint lacks {missing}. Is it a T5 encoder-decoder"
            " with T5X parameter names?"
        )
    vocab, h = shapes["token_embedder/embedding"]
    joined = shapes["encoder/layers_0/attention/query/kernel"][1]
    heads, buckets = shapes["encoder/relpos_bias/rel_embedding"]
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


def detect_format(path: str) -> str:
    """Names the checkpoint layout at `path`: "hf", "t5x" (legacy) or "orbax".

    Args:
      path: a local folder or a `gs://` folder (for T5X checkpoints).

    Returns:
      "hf", "t5x" or "orbax".

    Raises:
      CheckpointError: the path does not exist or holds nothing recognisable.
    """
    from prompt_tuning.t5 import hf_format, t5x_format  # noqa: PLC0415

    if not t5x_format.exists(path):
        raise CheckpointError(f"Checkpoint path {path} does not exist.")
    if hf_format.is_hf_folder(path):
        return "hf"
    # Orbax first: its item folders may also hold a msgpack `checkpoint` file.
    if t5x_format.find_orbax_item(path) is not None:
        return "orbax"
    if t5x_format.is_legacy_t5x(path):
        return "t5x"
    raise CheckpointError(
        f"{path} is not a recognisable T5 checkpoint. Expected one of: a Hugging Face folder"
        " (config.json with model.safetensors, model.safetensors.index.json or"
        " pytorch_model.bin); a legacy T5X folder such as .../checkpoint_1000000/ holding the"
        " msgpack file `checkpoint`; or an orbax/OCDBT checkpoint (manifest.ocdbt or _METADATA,"
        " possibly in state/ or params/)."
    )


def load_checkpoint(
    path: str | os.PathLike, config: T5Config | None = None, dtype: Any = None
) -> tuple[T5Config, Params]:
    """Loads a frozen T5 from a Hugging Face, legacy T5X or orbax (OCDBT) checkpoint.

    Only the model parameters are read (a T5X checkpoint's `target`); optimizer state is never
    materialised. Large arrays are read one at a time.

    Args:
      path: the checkpoint folder (T5X folders may be `gs://...`).
      config: when given, the parameters must fit it exactly (checked) and it is returned as is;
        otherwise the config is read from `config.json` (HF) or inferred from the shapes (T5X; see
        `infer_config`).
      dtype: cast every parameter to this dtype (e.g. `jnp.bfloat16`); None keeps the stored one.

    Returns:
      `(config, params)`: `params` is the nested-dict tree of docs/DESIGN.md with numpy leaves.

    Raises:
      CheckpointError: the path is missing or unrecognisable, an array is truncated or corrupt,
        or the parameters do not fit `config`.
    """
    from prompt_tuning.t5 import hf_format, t5x_format  # noqa: PLC0415

    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "hf":
        found_config, flat = hf_format.load_hf(path, dtype)
    elif kind == "t5x":
        flat = t5x_format.load_legacy_t5x(path, dtype)
        found_config = None
    else:
        flat = t5x_format.load_orbax(path, dtype)
        found_config = None
    shapes = {name: tuple(array.shape) for name, array in flat.items()}
    if config is None:
        config = found_config or infer_config(shapes)
    check_shapes(shapes, config)
    return config, unflatten(flat)


def read_variable(path: str | os.PathLike, name: str, dtype: Any = None) -> np.ndarray:
    """Reads one parameter of a checkpoint, e.g. `token_embedder/embedding` for prompt init.

    A legacy T5X checkpoint opens only that array; HF and orbax checkpoints are read whole.

    Args:
      path: the checkpoint folder (HF, legacy T5X or orbax).
      name: the parameter's name in our tree (`encoder/prompt/prompt`, ...).
      dtype: cast to this dtype; None keeps the stored one.

    Returns:
      The array.

    Raises:
      CheckpointError: the checkpoint is missing or unreadable.
      MissingParameterError: the checkpoint has no parameter `name` (also a KeyError).
    """
    from prompt_tuning.t5 import hf_format, t5x_format  # noqa: PLC0415

    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "t5x":
        flat = t5x_format.load_legacy_t5x(path, dtype, names=(name,))
    elif kind == "hf":
        flat = hf_format.load_hf(path, dtype)[1]
    else:
        flat = t5x_format.load_orbax(path, dtype)
    if name not in flat:
        known = f" (it has e.g. {sorted(flat)[:6]})" if flat else ""
        raise MissingParameterError(
            f"Checkpoint {path} has no parameter {name!r}{known}. Check the name; prompt"
            " parameters live under encoder/prompt/."
        )
    return flat[name]


def save_hf_checkpoint(
    params: Mapping[str, Any],
    config: T5Config,
    path: str | os.PathLike,
    transformers_version: int = 4,
) -> None:
    """Writes a Hugging Face T5 folder; see `hf_format.save_hf_checkpoint`."""
    from prompt_tuning.t5 import hf_format  # noqa: PLC0415

    hf_format.save_hf_checkpoint(params, config, path, transformers_version)


def save_t5x_checkpoint(params: Mapping[str, Any], path: str | os.PathLike, step: int = 0) -> None:
    """Writes a legacy T5X checkpoint folder; see `t5x_format.save_t5x_checkpoint`."""
    from prompt_tuning.t5 import t5x_format  # noqa: PLC0415

    t5x_format.save_t5x_checkpoint(params, path, step)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The training step a checkpoint was written at: where a T5X fine-tuning run starts counting.

    T5X restores the step with the pretrained weights, so its `TRAIN_STEPS` includes it (30,000
    steps from `checkpoint_1100000` is `TRAIN_STEPS = 1_130_000`).

    Args:
      path: a legacy T5X folder (`optimizer/state/step` of its msgpack file), an orbax checkpoint
        (`state/step`) or a Hugging Face folder (no step: 0).

    Returns:
      The step, 0 for Hugging Face folders and T5X checkpoints without one.

    Raises:
      CheckpointError: the path is missing or unrecognisable, or its step is unreadable.
    """
    from prompt_tuning.t5 import t5x_format  # noqa: PLC0415

    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "hf":
        return 0
    step = t5x_format.read_legacy_step(path) if kind == "t5x" else t5x_format.read_orbax_step(path)
    return step or 0
