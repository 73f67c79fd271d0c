"""Hugging Face (transformers) T5, mT5 and UMT5 checkpoints <-> the T5X parameter tree.

transformers stores `nn.Linear` weights as `[out, in]`; T5X kernels are `[in, out]`, so every
kernel is transposed. The relative position table is `[buckets, N]` in transformers (an
`nn.Embedding`) and `[N, buckets]` in T5X: only in block 0 of each stack for T5 and mT5
(`{encoder,decoder}/relpos_bias`), in every block's self-attention for UMT5
(`{encoder,decoder}/layers_i/relpos_bias`). `config.json` <-> `T5Config`, the model types and the
three output-layer layouts (untied `lm_head`, tied and scaled, tied unscaled): `hf_config`.

Safetensors files are read with the `safetensors` library (`safe_open`, `get_slice`), so a host
can read just the slice of a tensor its devices hold (`hf_readers`).

Letters: V vocabulary, H model dim, N heads, K head dim, F MLP dim.
"""

import dataclasses
import json
import os
from collections.abc import Collection, Mapping
from typing import Any

import ml_dtypes
import numpy as np
import safetensors

from prompt_tuning.t5 import checkpoint_tree
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.hf_config import (  # noqa: F401 (re-exported)
    config_from_hf,
    config_to_hf,
    model_type,
    writes_tied,
)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX)

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
# Keys transformers may write that carry no parameter of their own.
_IGNORED_KEYS = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)
_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}


def is_hf_folder(path: str) -> bool:
    """Whether `path` is a local folder with `config.json` and a weights file."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and any(
        os.path.isfile(os.path.join(path, name)) for name in _WEIGHT_FILES
    )


# ----------------------------------------------------------------------------------------------
# Name mapping.


def _layer_names(config: T5Config, stack: str, i: int) -> dict[str, tuple[str, bool]]:
    """T5X name -> (transformers name, transpose?) for block `i` of `stack`."""
    ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
    if stack == "encoder":
        attention = {"attention": f"{theirs}.0.SelfAttention"}
        norms = {"pre_attention_layer_norm": 0, "pre_mlp_layer_norm": 1}
        mlp = f"{theirs}.1.DenseReluDense"
    else:
        attention = {
            "self_attention": f"{theirs}.0.SelfAttention",
            "encoder_decoder_attention": f"{theirs}.1.EncDecAttention",
        }
        norms = {
            "pre_self_attention_layer_norm": 0,
            "pre_cross_attention_layer_norm": 1,
            "pre_mlp_layer_norm": 2,
        }
        mlp = f"{theirs}.2.DenseReluDense"
    names = {}
    for block, hf_block in attention.items():
        for role, letter in _ATTENTION.items():
            names[f"{ours}/{block}/{role}/kernel"] = (f"{hf_block}.{letter}.weight", True)
    for norm, index in norms.items():
        names[f"{ours}/{norm}/scale"] = (f"{theirs}.{index}.layer_norm.weight", False)
    wis = ["wi"] if len(config.mlp_activations) == 1 else [f"wi_{j}" for j in range(2)]
    for dense in [*wis, "wo"]:
        names[f"{ours}/mlp/{dense}/kernel"] = (f"{mlp}.{dense}.weight", True)
    return names


def name_map(config: T5Config) -> dict[str, tuple[str, bool]]:
    """Maps every T5X parameter name of `config` to its transformers name.

    Args:
      config: the model configuration.

    Returns:
      `{t5x_name: (transformers_name, transpose)}`; `transpose` is True where the transformers
      tensor is the transpose of ours (kernels and the relative position table).
    """
    names = {"token_embedder/embedding": ("shared.weight", False)}
    for stack, count in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        for i in range(count):
            names.update(_layer_names(config, stack, i))
        bias = "layer.0.SelfAttention.relative_attention_bias.weight"
        if config.relative_attention_per_layer:
            for i in range(count):
                names[f"{stack}/layers_{i}/relpos_bias/rel_embedding"] = (
                    f"{stack}.block.{i}.{bias}",
                    True,
                )
        else:
            names[f"{stack}/relpos_bias/rel_embedding"] = (f"{stack}.block.0.{bias}", True)
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        names[f"{stack}/{norm}/scale"] = (f"{stack}.final_layer_norm.weight", False)
    if not config.logits_via_embedding:
        names["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
    return names


# ----------------------------------------------------------------------------------------------
# Tensor files.


def _safetensors_error(path: str, error: Exception) -> checkpoint_tree.CheckpointError:
    return checkpoint_tree.CheckpointError(
        f"{path} is not a readable safetensors file ({error}): it is truncated or corrupt; "
        "download it again."
    )


@dataclasses.dataclass
class SafetensorsReader:
    """One tensor of a safetensors file, read in slices with `safetensors.safe_open`.

    Attributes:
      path: the `.safetensors` file.
      name: the tensor's transformers name.
      transpose: the stored tensor is the transpose of ours (`[out, in]` weights).
      shape: our (transposed) shape.
      dtype: the stored dtype.
    """

    path: str
    name: str
    transpose: bool
    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, index: checkpoint_tree.Index | None = None) -> np.ndarray:
        """Our `index` slice: for a transposed tensor, the transposed slice of the stored one."""
        index = tuple(index or ())
        stored = index[::-1] if self.transpose else index
        try:
            with safetensors.safe_open(self.path, framework="numpy") as f:
                array = f.get_slice(self.name)[stored] if stored else f.get_tensor(self.name)
        except safetensors.SafetensorError as e:
            raise _safetensors_error(self.path, e) from e
        return array.T if self.transpose else array


@dataclasses.dataclass
class TorchReader:
    """One tensor of a `pytorch_model.bin` shard (memory-mapped; slicing touches only its pages)."""

    tensor: Any
    transpose: bool

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(self.tensor.shape)
        return shape[::-1] if self.transpose else shape

    @property
    def dtype(self) -> np.dtype:
        return _torch_to_numpy(self.tensor.reshape(-1)[:1]).dtype

    def read(self, index: checkpoint_tree.Index | None = None) -> np.ndarray:
        index = tuple(index or ())
        stored = index[::-1] if self.transpose else index
        array = _torch_to_numpy(self.tensor[stored] if stored else self.tensor)
        return array.T if self.transpose else array


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Writes `tensors` to a safetensors file (`{"format": "pt"}` metadata, as transformers wants).

    Args:
      path: the file to write.
      tensors: name -> array; float32/16, bfloat16 or integer dtypes.
    """
    from safetensors.numpy import save_file  # noqa: PLC0415

    contiguous = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    save_file(contiguous, path, metadata={"format": "pt"})


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    import torch  # noqa: PLC0415

    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _weight_shards(path: str) -> list[str]:
    for index in (SAFETENSORS_INDEX, TORCH_INDEX):
        if os.path.isfile(os.path.join(path, index)):
            with open(os.path.join(path, index)) as f:
                weight_map = json.load(f)["weight_map"]
            return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    for name in (SAFETENSORS_FILE, TORCH_FILE):
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    raise checkpoint_tree.CheckpointError(
        f"{path} has no weights file (expected one of {_WEIGHT_FILES})."
    )


def _stored_tensors(path: str, transposed: Mapping[str, bool]) -> dict[str, Any]:
    """`{transformers name: reader}` for every tensor of an HF folder (nothing read yet).

    Safetensors files are opened only for their headers; `.bin` shards are memory-mapped with
    `torch.load(weights_only=True, mmap=True)` (torch is imported only then).
    """
    readers = {}
    for shard in _weight_shards(path):
        if shard.endswith(".safetensors"):
            try:
                with safetensors.safe_open(shard, framework="numpy") as f:
                    for name in f.keys():
                        info = f.get_slice(name)
                        shape = tuple(info.get_shape())
                        transpose = transposed.get(name, False)
                        readers[name] = SafetensorsReader(
                            shard,
                            name,
                            transpose,
                            shape[::-1] if transpose else shape,
                            _SAFETENSORS_DTYPES.get(info.get_dtype(), np.dtype(object)),
                        )
            except safetensors.SafetensorError as e:
                raise _safetensors_error(shard, e) from e
        else:
            import torch  # noqa: PLC0415

            try:
                state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
            except (RuntimeError, OSError, EOFError) as e:
                raise checkpoint_tree.CheckpointError(
                    f"{shard} is not a readable PyTorch checkpoint ({e}): it is truncated or "
                    "corrupt; download it again."
                ) from e
            for name, tensor in state.items():
                readers[name] = TorchReader(tensor, transposed.get(name, False))
    return readers


# ----------------------------------------------------------------------------------------------
# Load and save.


def read_config(path: str) -> T5Config:
    """The `T5Config` of an HF folder's `config.json` (`hf_config.config_from_hf`).

    Raises:
      CheckpointError: the file is not JSON, lacks a T5 field or names an unsupported model.
    """
    file = os.path.join(path, CONFIG_FILE)
    try:
        with open(file) as f:
            return config_from_hf(json.load(f))
    except ValueError as e:
        if isinstance(e, checkpoint_tree.CheckpointError):
            raise
        raise checkpoint_tree.CheckpointError(f"{file} is not valid JSON ({e}).") from e


def hf_readers(path: str) -> tuple[T5Config, dict[str, checkpoint_tree.ArrayReader]]:
    """The config and one slice reader per parameter (T5X names, our layout) of an HF folder.

    Args:
      path: folder with `config.json` and weights.

    Returns:
      `(config, {t5x_name: reader})`; nothing but headers has been read.

    Raises:
      CheckpointError: unknown or missing tensors, an unsupported dtype, or an unreadable file.
    """
    config = read_config(path)
    wanted = {hf: (ours, transpose) for ours, (hf, transpose) in name_map(config).items()}
    readers = _stored_tensors(path, {hf: transpose for hf, (_, transpose) in wanted.items()})
    if "shared.weight" not in readers and "encoder.embed_tokens.weight" in readers:
        readers["shared.weight"] = readers["encoder.embed_tokens.weight"]
    if config.logits_via_embedding:
        readers.pop("lm_head.weight", None)  # Some writers keep the tied copy.
    unknown = sorted(set(readers) - set(wanted) - set(_IGNORED_KEYS))
    missing = sorted(set(wanted) - set(readers))
    if unknown or missing:
        raise checkpoint_tree.CheckpointError(
            f"The tensors in {path} do not match its config.json: missing {missing[:8]},"
            f" unknown {unknown[:8]}. Is this a T5, MT5 or UMT5 ForConditionalGeneration"
            " checkpoint (an encoder-only or other model is not supported)?"
        )
    out = {}
    for hf_name, (ours, _) in wanted.items():
        reader = readers[hf_name]
        if reader.dtype == np.dtype(object):
            raise checkpoint_tree.CheckpointError(
                f"{getattr(reader, 'path', path)}: tensor {hf_name} has an unsupported dtype."
            )
        out[ours] = reader
    return config, out


def load_hf(
    path: str, dtype: Any = None, names: Collection[str] | None = None
) -> tuple[T5Config, dict[str, np.ndarray]]:
    """Reads an HF T5 folder into `(config, {t5x_name: array})`.

    Args:
      path: folder with `config.json` and weights.
      dtype: cast every parameter to it; None keeps the stored dtype.
      names: read only these parameters (the others are never read); None reads all.

    Returns:
      The config from `config.json` and the flat parameter dict (T5X layout, transposed).

    Raises:
      CheckpointError: unknown or missing tensors, or a truncated file.
    """
    config, readers = hf_readers(path)
    if names is not None:
        readers = {name: reader for name, reader in readers.items() if name in names}
    flat = {}
    for ours, reader in readers.items():
        array = reader.read()
        flat[ours] = np.array(array, dtype=dtype or array.dtype, order="C")
    return config, flat


def params_to_hf_state_dict(
    params: Mapping[str, Any], config: T5Config, transformers_version: int = 4
) -> dict[str, np.ndarray]:
    """Converts our parameter tree to a transformers T5 state dict (numpy, `[out, in]` weights).

    Args:
      params: the nested parameter tree of docs/DESIGN.md (with or without a `target` level).
      config: its configuration.
      transformers_version: 4 or 5 (see `config_to_hf`).

    Returns:
      `{transformers_name: array}`, including `lm_head.weight` when the written model is untied.

    Raises:
      CheckpointError: the tree does not fit `config`.
    """
    flat = checkpoint_tree.plain_arrays(params.get("target", params))
    flat = {name: np.asarray(value) for name, value in flat.items()}
    checkpoint_tree.check_shapes({n: v.shape for n, v in flat.items()}, config)
    state = {}
    for ours, (hf_name, transpose) in name_map(config).items():
        state[hf_name] = np.ascontiguousarray(flat[ours].T if transpose else flat[ours])
    if config.logits_via_embedding and not writes_tied(config, transformers_version):
        state["lm_head.weight"] = state["shared.weight"].copy()
    return state


def save_hf_checkpoint(
    params: Mapping[str, Any],
    config: T5Config,
    path: str | os.PathLike,
    transformers_version: int = 4,
) -> None:
    """Writes `config.json` + `model.safetensors` that `T5ForConditionalGeneration` (or, with a
    table per layer, `UMT5ForConditionalGeneration`) loads.

    The folder is written under a temporary name beside `path` and renamed when complete.

    Args:
      params: the nested parameter tree of docs/DESIGN.md.
      config: its configuration.
      path: the folder to create; it must not exist yet.
      transformers_version: 4 (T5 1.1 written with `lm_head`) or 5 (`scale_decoder_outputs`).

    Raises:
      CheckpointError: `path` exists or the tree does not fit `config`.
    """
    path = os.fspath(path)
    state = params_to_hf_state_dict(params, config, transformers_version)
    hf_config = config_to_hf(config, transformers_version)
    dtypes = {np.dtype(array.dtype) for array in state.values()}
    hf_config["torch_dtype"] = "bfloat16" if np.dtype(ml_dtypes.bfloat16) in dtypes else "float32"

    def write(tmp: str) -> None:
        write_safetensors(os.path.join(tmp, SAFETENSORS_FILE), state)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(hf_config, f, indent=2)

    checkpoint_tree.write_atomically(path, write)
