"""T5X checkpoints: the legacy msgpack + tensorstore layout (orbax ones: `orbax_format`).

Legacy layout (T5X `checkpoint_tree.py`, format version 3), e.g. `.../checkpoint_1000000/`:
- `checkpoint`: a msgpack map `{"version": 3, "optimizer": {"target": {...}, "state": {...}}}` in
  flax's serialisation (ext type 1 = ndarray packed as `(shape, dtype name, C-order bytes)`,
  ext type 3 = numpy scalar; arrays over 1 GiB split into `{"__msgpack_chunked_array__": ...}`).
- Large arrays are not inline: their leaf is a tensorstore spec (a map with `driver: "zarr"`,
  `kvstore: {driver: "file"|"gfile"|"gcs", path: <relative folder>}` and `metadata`), or in
  orbax's older layout a string `"PLACEHOLDER://<relative folder>"`. Each folder is a zarr v2 array
  (`.zarray`, gzip chunks), e.g. `target.encoder.layers_0.attention.query.kernel/`.

Only `target` is read; optimizer-state placeholders are never opened and inline optimizer arrays
are never decoded. `gs://` folders are read through tensorstore's `gcs` kvstore and
`tf.io.gfile` (TensorFlow is imported only for `gs://` paths).
"""

import dataclasses
import itertools
import math
import os
import posixpath
import re
from collections.abc import Collection, Mapping
from typing import Any

import msgpack
import numpy as np

from prompt_tuning.t5 import checkpoint_tree

MSGPACK_FILE = "checkpoint"
_PLACEHOLDER = "PLACEHOLDER://"
_EXT_NDARRAY, _EXT_SCALAR = 1, 3
_CHUNK_BYTES = 64 * 2**20  # Zarr chunks written by `save_t5x_checkpoint`: at most 64 MiB.
# Leaves stored as zarr arrays when writing (T5X does this for its partitioned parameters).
_ZARR_LEAVES = ("kernel", "embedding")


# ----------------------------------------------------------------------------------------------
# Files, local or gs://.


def _is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def _gfile():
    import tensorflow as tf  # noqa: PLC0415

    return tf.io.gfile


def exists(path: str) -> bool:
    """Whether `path` exists (local or `gs://`)."""
    return _gfile().exists(path) if _is_gcs(path) else os.path.exists(path)


def is_file(path: str) -> bool:
    if _is_gcs(path):
        return _gfile().exists(path) and not _gfile().isdir(path)
    return os.path.isfile(path)


def join_path(*parts: str) -> str:
    return posixpath.join(*parts) if _is_gcs(parts[0]) else os.path.join(*parts)


def _read_bytes(path: str) -> bytes:
    if _is_gcs(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _kvstore(folder: str) -> dict[str, Any]:
    """A tensorstore kvstore spec for a local or `gs://bucket/prefix` folder."""
    if _is_gcs(folder):
        match = re.fullmatch(r"gs://([^/]+)/?(.*)", folder)
        bucket, prefix = match.group(1), match.group(2)
        return {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/"}
    return {"driver": "file", "path": os.path.abspath(folder) + "/"}


# ----------------------------------------------------------------------------------------------
# Detection.


def is_legacy_t5x(path: str) -> bool:
    """Whether `path` is a legacy T5X folder (holds the msgpack file `checkpoint`) or that file."""
    if os.path.basename(path.rstrip("/")) == MSGPACK_FILE and is_file(path):
        return True
    return is_file(join_path(path, MSGPACK_FILE))


# ----------------------------------------------------------------------------------------------
# Legacy reading.


def _decode_ext(ext: msgpack.ExtType, name: str) -> np.ndarray:
    """Decodes flax's msgpack ndarray / numpy-scalar extension types."""
    if ext.code not in (_EXT_NDARRAY, _EXT_SCALAR):
        raise checkpoint_tree.CheckpointError(f"{name}: unsupported msgpack ext type {ext.code}.")
    shape, dtype_name, buffer = msgpack.unpackb(ext.data, raw=True)
    dtype_name = dtype_name.decode()
    if dtype_name == "bfloat16":
        import ml_dtypes  # noqa: PLC0415

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(dtype_name)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()


def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and "driver" in value and "kvstore" in value


def _is_chunked(value: Any) -> bool:
    return isinstance(value, Mapping) and "__msgpack_chunked_array__" in value


def _flatten_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens a msgpack tree, keeping tensorstore specs and chunked arrays as leaves."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not (_is_ts_spec(value) or _is_chunked(value)):
            flat.update(_flatten_leaves(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _relative_folder(spec: Mapping[str, Any], name: str) -> str:
    kvstore = spec["kvstore"]
    relative = kvstore.get("path") if isinstance(kvstore, Mapping) else None
    relative = relative or spec.get("path")
    if not relative:
        raise checkpoint_tree.CheckpointError(
            f"The tensorstore spec of {name} names no path: {spec}."
        )
    return relative.rstrip("/")


def _check_chunks(store: Any, kvstore: dict[str, Any], name: str, folder: str) -> None:
    """Raises when a chunk file is absent (zarr would silently fill it with zeros)."""
    import tensorstore as ts  # noqa: PLC0415

    metadata = store.spec().to_json()["metadata"]
    if metadata.get("fill_value") is not None:
        return  # Chunks equal to the fill value may legitimately be absent.
    counts = [math.ceil(s / c) for s, c in zip(metadata["shape"], metadata["chunks"], strict=True)]
    separator = metadata.get("dimension_separator", ".")
    keys = {separator.join(map(str, index)) for index in itertools.product(*map(range, counts))}
    keys = keys or {"0"}
    present = {key.decode() for key in ts.KvStore.open(kvstore).result().list().result()}
    missing = sorted(keys - present)
    if missing:
        raise checkpoint_tree.CheckpointError(
            f"Array {name} is incomplete: chunk file {join_path(folder, missing[0])} is missing"
            f" ({len(missing)} of {len(keys)} chunks). The checkpoint was not fully copied; copy"
            " it again."
        )


@dataclasses.dataclass
class ZarrReader:
    """One zarr array of a legacy checkpoint, read in slices through tensorstore.

    Opening reads only the array's `.zarray` metadata; every chunk file is checked to exist before
    the first read (zarr would fill a missing chunk with zeros), and each `read` fetches only the
    chunks that the slice touches.
    """

    folder: str
    name: str
    shape: tuple[int, ...] = ()
    dtype: np.dtype = np.dtype(np.float32)
    _store: Any = None
    _checked: bool = False

    def __post_init__(self):
        import tensorstore as ts  # noqa: PLC0415

        self._kvstore = _kvstore(self.folder)
        try:
            self._store = ts.open(
                {"driver": "zarr", "kvstore": self._kvstore}, open=True, read=True
            ).result()
        except ValueError as e:
            raise self._error(e) from e
        self.shape = tuple(self._store.shape)
        self.dtype = np.dtype(self._store.dtype.numpy_dtype)

    def _error(self, error: Exception) -> checkpoint_tree.CheckpointError:
        return checkpoint_tree.CheckpointError(
            f"Cannot read array {self.name} from {self.folder}: {error}. The file is missing, "
            "truncated or corrupt; copy the checkpoint again."
        )

    def read(self, index: checkpoint_tree.Index | None = None) -> np.ndarray:
        if not self._checked:
            _check_chunks(self._store, self._kvstore, self.name, self.folder)
            self._checked = True
        try:
            view = self._store[tuple(index)] if index else self._store
            return np.asarray(view.read().result())
        except ValueError as e:
            raise self._error(e) from e


def _inline(name: str, leaf: Any) -> np.ndarray | None:
    """The array of a leaf stored inside the msgpack file, or None for an external one."""
    if isinstance(leaf, msgpack.ExtType):
        return _decode_ext(leaf, name)
    if _is_chunked(leaf):
        chunks = [_decode_ext(leaf["chunks"][str(i)], name) for i in range(len(leaf["chunks"]))]
        shape = [leaf["shape"][str(i)] for i in range(len(leaf["shape"]))]
        return np.concatenate(chunks).reshape(shape)
    if isinstance(leaf, int | float) and not isinstance(leaf, bool):
        return np.asarray(leaf)
    return None


def _leaf_reader(ckpt_dir: str, name: str, leaf: Any) -> checkpoint_tree.ArrayReader:
    """A slice reader of one `target` leaf of the msgpack file."""
    inline = _inline(name, leaf)
    if inline is not None:
        return checkpoint_tree.InMemoryReader(inline)
    if _is_ts_spec(leaf):
        reader = ZarrReader(join_path(ckpt_dir, _relative_folder(leaf, name)), name)
        expected = leaf.get("metadata", {}).get("shape")
        if expected is not None and list(reader.shape) != list(expected):
            raise checkpoint_tree.CheckpointError(
                f"Array {name} has shape {reader.shape} on disk but the msgpack file records"
                f" {tuple(expected)}; the checkpoint is corrupt."
            )
        return reader
    if isinstance(leaf, str) and leaf.startswith(_PLACEHOLDER):
        return ZarrReader(join_path(ckpt_dir, leaf[len(_PLACEHOLDER) :]), name)
    raise checkpoint_tree.CheckpointError(
        f"{name}: unrecognised leaf {type(leaf).__name__} in the msgpack file."
    )


def legacy_readers(
    path: str, names: Collection[str] | None = None
) -> dict[str, checkpoint_tree.ArrayReader]:
    """One slice reader per `target` parameter of a legacy T5X checkpoint (no array read yet).

    Args:
      path: the checkpoint folder (`checkpoint_N/`, local or `gs://`) or its `checkpoint` file.
      names: only these parameters (the others' arrays are never opened); None: all.

    Returns:
      `{"encoder/layers_0/attention/query/kernel": reader, ...}` (T5X names, no `target`).

    Raises:
      CheckpointError: the msgpack file is corrupt or has no `target`, or an array's metadata
        is unreadable.
    """
    if os.path.basename(path.rstrip("/")) == MSGPACK_FILE and is_file(path):
        path = os.path.dirname(path.rstrip("/"))
    file = join_path(path, MSGPACK_FILE)
    try:
        contents = msgpack.unpackb(_read_bytes(file), raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise checkpoint_tree.CheckpointError(
            f"{file} is not a readable msgpack checkpoint ({e}): it is truncated or corrupt."
        ) from e
    if not isinstance(contents, Mapping):
        raise checkpoint_tree.CheckpointError(f"{file} does not hold a T5X state dict.")
    state = contents.get("optimizer", contents)
    if not isinstance(state, Mapping) or "target" not in state:
        raise checkpoint_tree.CheckpointError(
            f"{file} has no model parameters: expected {{'optimizer': {{'target': ...}}}} (T5X)"
            f" or {{'target': ...}}; found keys {sorted(map(str, contents))}."
        )
    leaves = _flatten_leaves(state["target"])
    if names is not None:
        leaves = {name: leaf for name, leaf in leaves.items() if name in names}
    return {name: _leaf_reader(path, name, leaf) for name, leaf in leaves.items()}


# ----------------------------------------------------------------------------------------------
# Legacy writing.


def _encode_ext(array: np.ndarray) -> msgpack.ExtType:
    packed = msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)
    return msgpack.ExtType(_EXT_NDARRAY, packed)


def _write_zarr(ckpt_dir: str, name: str, array: np.ndarray) -> dict[str, Any]:
    """Writes `array` as a gzip zarr array; returns its relative tensorstore spec for msgpack."""
    import tensorstore as ts  # noqa: PLC0415

    relative = "target." + name.replace("/", ".")
    row_bytes = array.dtype.itemsize * math.prod(array.shape[1:])
    rows = max(1, min(array.shape[0], _CHUNK_BYTES // max(row_bytes, 1)))
    spec = {
        "driver": "zarr",
        "dtype": array.dtype.name,
        "kvstore": _kvstore(join_path(ckpt_dir, relative)),
        "metadata": {
            "shape": list(array.shape),
            "chunks": [rows, *array.shape[1:]],
            "compressor": {"id": "gzip", "level": 1},
        },
    }
    store = ts.open(spec, create=True, open=True).result()
    store.write(array).result()
    metadata = store.spec().to_json()["metadata"]
    return {
        "driver": "zarr",
        "dtype": array.dtype.name,
        "kvstore": {"driver": "file", "path": relative},
        "metadata": metadata,
    }


def _write_legacy(ckpt_dir: str, flat: Mapping[str, Any], step: int) -> None:
    target = {}
    for name, value in flat.items():
        array = np.asarray(value)
        if name.rsplit("/", 1)[-1] in _ZARR_LEAVES and array.ndim >= 2:
            target[name] = _write_zarr(ckpt_dir, name, array)
        else:
            target[name] = _encode_ext(np.ascontiguousarray(array))
    contents = {
        "version": 3,
        "optimizer": {
            "target": checkpoint_tree.unflatten(target),
            "state": {"step": _encode_ext(np.asarray(step, np.int32))},
        },
    }
    data = msgpack.packb(contents, use_bin_type=True)
    if _is_gcs(ckpt_dir):
        with _gfile().GFile(join_path(ckpt_dir, MSGPACK_FILE), "wb") as f:
            f.write(data)
    else:
        with open(join_path(ckpt_dir, MSGPACK_FILE), "wb") as f:
            f.write(data)


def save_t5x_checkpoint(params: Mapping[str, Any], path: str | os.PathLike, step: int = 0) -> None:
    """Writes a legacy T5X checkpoint folder (format version 3) holding `params` as `target`.

    Kernels and embeddings go to gzip zarr arrays (`target.<dotted name>/`, chunks of at most
    64 MiB), the rest inline in the msgpack file. The optimizer state holds only `step`, so T5X
    restores it as an initial checkpoint with `RestoreCheckpointConfig(strict=False)` or with
    `assignment_map`/fallback settings that skip optimizer state. Local folders are written under
    a temporary name and renamed when complete; `gs://` folders are written in place.

    Args:
      params: the nested parameter tree (with or without a `target` level).
      path: the folder to create, e.g. `.../checkpoint_0`; it must not exist yet.
      step: the step recorded in the optimizer state.

    Raises:
      CheckpointError: `path` already exists.
    """
    path = os.fspath(path)
    flat = checkpoint_tree.plain_arrays(params.get("target", params))
    if _is_gcs(path):
        if exists(path):
            raise checkpoint_tree.CheckpointError(f"{path} already exists; choose a new folder.")
        _write_legacy(path, flat, step)
    else:
        checkpoint_tree.write_atomically(path, lambda tmp: _write_legacy(tmp, flat, step))


# ----------------------------------------------------------------------------------------------
# The training step a checkpoint was written at.


def as_step(value: Any, where: str) -> int:
    """An int from a msgpack/orbax step leaf (int, numpy scalar, 0-d array or ndarray ext)."""
    if isinstance(value, msgpack.ExtType):
        value = _decode_ext(value, where)
    array = np.asarray(value)
    if array.size != 1 or not np.issubdtype(array.dtype, np.integer):
        raise checkpoint_tree.CheckpointError(f"{where} is not an integer step: {value!r}.")
    return int(array.reshape(()))


def read_legacy_step(path: str) -> int | None:
    """The step of a legacy T5X checkpoint (`optimizer/state/step`), or None when absent.

    Args:
      path: the checkpoint folder (`checkpoint_N/`, local or `gs://`) or its `checkpoint` file.

    Raises:
      CheckpointError: the msgpack file is unreadable or its step is not an integer.
    """
    if os.path.basename(path.rstrip("/")) != MSGPACK_FILE:
        path = join_path(path, MSGPACK_FILE)
    try:
        contents = msgpack.unpackb(_read_bytes(path), raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        message = f"{path} is not a readable msgpack checkpoint: {e}"
        raise checkpoint_tree.CheckpointError(message) from e
    state = contents.get("optimizer", contents) if isinstance(contents, Mapping) else {}
    step = state.get("state", {}).get("step") if isinstance(state, Mapping) else None
    return None if step is None else as_step(step, f"{path}: state/step")
