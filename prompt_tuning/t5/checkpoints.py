"""Checkpoint I/O for the frozen T5: detect a checkpoint's format, load it, check it.

`load_checkpoint` reads three layouts into one parameter tree (the T5X/Flaxformer names of
docs/DESIGN.md, no `target` level) and a `T5Config`:

- a Hugging Face folder (`config.json` + `model.safetensors`, a sharded
  `model.safetensors.index.json`, or `pytorch_model.bin`): see `hf_format`;
- a legacy T5X checkpoint folder (`checkpoint_N/` holding the msgpack file `checkpoint` and one
  zarr array per large parameter): see `t5x_format`; T5X scalable_t5's layouts (UMT5's public
  checkpoints: scanned layers, 3-D attention kernels) are read under our names
  (`scanned_layout`);
- an orbax / new T5X checkpoint (OCDBT: `manifest.ocdbt`, `_METADATA`, possibly under a
  `state/`, `params/` or `default/` item folder): see `orbax_format`.

HF folders must be local; T5X folders may also be `gs://` paths. torch, tensorstore, orbax and
TensorFlow are imported only when the format at hand needs them.

`load_checkpoint` returns host `numpy` arrays in nested plain dicts; `sharded_loading` reads the
same checkpoints straight into global `jax.Array`s, each host reading only its devices' slices.
The shared pieces (errors, flat trees, shapes, readers) live in `checkpoint_tree`.

Letters: V vocabulary, H model dim, N heads, K head dim, F MLP dim.
"""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from prompt_tuning.t5 import checkpoint_tree, hf_format, orbax_format, scanned_layout, t5x_format
from prompt_tuning.t5.checkpoint_tree import (  # noqa: F401 (re-exported)
    PROMPT_SCOPE,
    CheckpointError,
    MissingParameterError,
    Params,
    cast,
    check_shapes,
    expected_shapes,
    flatten,
    infer_config,
    plain_arrays,
    unflatten,
    write_atomically,
)
from prompt_tuning.t5.config import T5Config


def detect_format(path: str) -> str:
    """Names the checkpoint layout at `path`: "hf", "t5x" (legacy) or "orbax".

    Args:
      path: a local folder or a `gs://` folder (for T5X checkpoints).

    Returns:
      "hf", "t5x" or "orbax".

    Raises:
      CheckpointError: the path does not exist or holds nothing recognisable.
    """
    if not t5x_format.exists(path):
        raise CheckpointError(f"Checkpoint path {path} does not exist.")
    if hf_format.is_hf_folder(path):
        return "hf"
    # Orbax first: its item folders may also hold a msgpack `checkpoint` file.
    if orbax_format.find_orbax_item(path) is not None:
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


def open_readers(
    path: str, names: Any = None
) -> tuple[str, T5Config | None, dict[str, checkpoint_tree.ArrayReader]]:
    """Slice readers of a legacy T5X or HF checkpoint's parameters (no array read yet).

    Args:
      path: the checkpoint folder.
      names: only these parameters (None: all).

    Returns:
      `(kind, config from config.json or None, {t5x_name: reader})`.

    Raises:
      CheckpointError: the path is missing or unreadable, or an orbax checkpoint (restored by
        `orbax_format.load_orbax` instead).
    """
    kind = detect_format(path)
    if kind == "hf":
        config, readers = hf_format.hf_readers(path)
        if names is not None:
            readers = {name: r for name, r in readers.items() if name in names}
        return kind, config, readers
    if kind == "t5x":
        return kind, None, _t5x_readers(path, names)
    raise CheckpointError(f"{path} is an orbax checkpoint; it has no slice readers.")


def _t5x_readers(path: str, names: Any) -> dict[str, checkpoint_tree.ArrayReader]:
    """A legacy T5X checkpoint's readers under our names; a scalable_t5 layout (UMT5's scanned
    layers, 3-D attention kernels) is converted by `scanned_layout.unscan`."""
    readers = t5x_format.legacy_readers(path, names)
    if names is not None and set(names) - set(readers):  # Perhaps stored scanned: list them all.
        everything = t5x_format.legacy_readers(path)
        shapes = {name: tuple(r.shape) for name, r in everything.items()}
        if scanned_layout.is_scalable_layout(shapes):
            readers = everything
    if scanned_layout.is_scalable_layout({n: tuple(r.shape) for n, r in readers.items()}):
        readers = scanned_layout.unscan(readers)
        if names is not None:
            readers = {name: r for name, r in readers.items() if name in names}
    return readers


def checkpoint_shapes(path: str | os.PathLike) -> tuple[str, T5Config | None, dict[str, tuple]]:
    """`(kind, config.json's config or None, {name: shape})` of a checkpoint, reading no array."""
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "orbax":
        return kind, None, orbax_format.orbax_shapes(path)
    _, config, readers = open_readers(path)
    return kind, config, {name: tuple(r.shape) for name, r in readers.items()}


def checkpoint_config(path: str | os.PathLike, **overrides: Any) -> T5Config:
    """The architecture a checkpoint states, so that it needs no model gin file.

    A Hugging Face folder's `config.json` gives every field (its `model_type` t5, mt5 or umt5);
    a T5X or orbax checkpoint gives what its shapes tell (`infer_config`), the rest keeps
    `T5Config`'s defaults (relative_attention_max_distance 128 and epsilon 1e-6, as every public
    T5 family has). No array is read.

    Args:
      path: the checkpoint (INITIAL_CHECKPOINT_PATH).
      **overrides: run settings applied on top, e.g. `dropout_rate`, `dtype`.

    Returns:
      The config.

    Raises:
      CheckpointError: the checkpoint is missing, unrecognisable or unsupported.
    """
    _, found, shapes = checkpoint_shapes(path)
    return (found or infer_config(shapes)).replace(**overrides)


def resolve_config(
    path: str, shapes: Mapping[str, tuple], found: T5Config | None, config: T5Config | None
) -> T5Config:
    """The config to load a checkpoint with, checked against its shapes before reading arrays.

    Args:
      path: the checkpoint (for messages).
      shapes: its `{name: shape}`.
      found: the config of its `config.json` (HF), or None.
      config: the config the caller requires, or None to take `found` or infer one.

    Returns:
      `config`, `found` or the inferred config.

    Raises:
      CheckpointError: `config` and `found` differ (naming the field and both values), or the
        shapes do not fit the config (naming the parameter and both shapes).
    """
    if config is not None and found is not None:
        where = f"the Hugging Face folder {path} ({hf_format.CONFIG_FILE})"
        checkpoint_tree.check_same_architecture(config, found, where)
    config = config or found or infer_config(shapes)
    check_shapes(shapes, config)
    return config


def load_checkpoint(
    path: str | os.PathLike, config: T5Config | None = None, dtype: Any = None
) -> tuple[T5Config, Params]:
    """Loads a frozen T5 from a Hugging Face, legacy T5X or orbax (OCDBT) checkpoint to the host.

    Only the model parameters are read (a T5X checkpoint's `target`); optimizer state is never
    materialised. Shapes are checked before any array is read, then arrays are read one at a time.
    For a model sharded over devices (and hosts), `sharded_loading.load_checkpoint_sharded` reads
    only each host's slices instead.

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
    path = os.fspath(path)
    if detect_format(path) == "orbax":
        config = resolve_config(path, orbax_format.orbax_shapes(path), None, config)
        return config, unflatten(orbax_format.load_orbax(path, dtype))
    _, found, readers = open_readers(path)
    shapes = {name: tuple(r.shape) for name, r in readers.items()}
    config = resolve_config(path, shapes, found, config)
    return config, unflatten({name: cast(r.read(), dtype) for name, r in readers.items()})


def read_variable(path: str | os.PathLike, name: str, dtype: Any = None) -> np.ndarray:
    """Reads one parameter of a checkpoint, e.g. `token_embedder/embedding` for prompt init.

    Only that array is read, in every format: a legacy T5X checkpoint opens its zarr folder (or
    decodes it from the msgpack file), an HF folder reads its tensor from the safetensors file,
    and an orbax checkpoint restores just that leaf.

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
    path = os.fspath(path)
    if detect_format(path) == "orbax":
        found = name in orbax_format.orbax_shapes(path)
        if found:
            return orbax_format.load_orbax(path, dtype, names=(name,))[name]
    else:
        _, _, readers = open_readers(path, names=(name,))
        if name in readers:
            return cast(readers[name].read(), dtype)
    shapes = checkpoint_shapes(path)[2]
    known = f" (it has e.g. {sorted(shapes)[:6]})" if shapes else ""
    raise MissingParameterError(
        f"Checkpoint {path} has no parameter {name!r}{known}. Check the name; prompt"
        " parameters live under encoder/prompt/."
    )


def save_hf_checkpoint(
    params: Mapping[str, Any],
    config: T5Config,
    path: str | os.PathLike,
    transformers_version: int = 4,
) -> None:
    """Writes a Hugging Face T5 folder; see `hf_format.save_hf_checkpoint`."""
    hf_format.save_hf_checkpoint(params, config, path, transformers_version)


def save_t5x_checkpoint(params: Mapping[str, Any], path: str | os.PathLike, step: int = 0) -> None:
    """Writes a legacy T5X checkpoint folder; see `t5x_format.save_t5x_checkpoint`."""
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
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "hf":
        return 0
    if kind == "t5x":
        return t5x_format.read_legacy_step(path) or 0
    return orbax_format.read_orbax_step(path) or 0
