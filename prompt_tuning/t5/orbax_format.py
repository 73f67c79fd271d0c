"""Orbax (new T5X, OCDBT) checkpoints: find the item, read its metadata, restore the model only.

An orbax PyTree checkpoint is a folder with `_METADATA` and/or `manifest.ocdbt`: the item folder
itself, or its `state/`, `params/` or `default/` subfolder (T5X writes `state/`). Only the `target`
(T5X) or `params` subtree is restored, by orbax's partial restore, so the optimizer state is never
read; with target shardings each host reads only the shards its devices hold.
"""

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from prompt_tuning.t5 import checkpoint_tree, t5x_format

_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt")
_ORBAX_ITEMS = ("", "state", "params", "default")


def find_orbax_item(path: str) -> str | None:
    """The orbax PyTree folder at `path` or in its `state/`, `params/`, `default/`; else None."""
    for item in _ORBAX_ITEMS:
        folder = t5x_format.join_path(path, item) if item else path
        markers = (t5x_format.join_path(folder, marker) for marker in _ORBAX_MARKERS)
        if any(t5x_format.is_file(marker) for marker in markers):
            return folder
    return None


def _orbax_metadata(path: str) -> tuple[str, str | None, dict[str, Any]]:
    """(item folder, "target"/"params"/None, flat {name: array metadata}) of an orbax checkpoint.

    Raises:
      CheckpointError: no orbax item, or unreadable metadata.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415

    item_dir = find_orbax_item(path)
    if item_dir is None:
        raise checkpoint_tree.CheckpointError(f"{path} holds no orbax checkpoint (_METADATA).")
    try:
        metadata = ocp.PyTreeCheckpointer().metadata(item_dir)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise checkpoint_tree.CheckpointError(
            f"Orbax cannot read the metadata of {item_dir} ({e}): it is corrupt or incomplete."
        ) from e
    tree = getattr(metadata, "item_metadata", metadata)
    tree = dict(getattr(tree, "tree", tree))
    key = next((k for k in ("target", "params") if k in tree), None)
    return item_dir, key, checkpoint_tree.flatten(tree[key] if key else tree)


def orbax_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` of an orbax checkpoint's model parameters (only metadata is read)."""
    return {name: tuple(m.shape) for name, m in _orbax_metadata(path)[2].items()}


def load_orbax(
    path: str,
    dtype: Any = None,
    names: Collection[str] | None = None,
    shardings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restores only the model parameters of an orbax PyTree (e.g. OCDBT) checkpoint.

    The subtree under `target` (T5X) or `params` is restored with orbax's partial restore; the
    optimizer state is never read. With `shardings`, every array is restored straight into a
    global `jax.Array` of that sharding: each host reads only the shards its devices hold.

    Args:
      path: the checkpoint folder, or a step folder holding a `state/`, `params/` or `default/`
        item.
      dtype: cast every parameter to it (by orbax while reading), or `{name: dtype}` for some of
        them (`checkpoint_tree.dtype_for`); None keeps the stored dtype.
      names: restore only these parameters (e.g. one embedding); None restores all.
      shardings: `{name: jax.sharding.Sharding}` for global arrays; None gives host numpy arrays.

    Returns:
      The flat `{t5x_name: array}` dict.

    Raises:
      CheckpointError: no orbax item is found or orbax cannot restore it.
    """
    import jax  # noqa: PLC0415
    import orbax.checkpoint as ocp  # noqa: PLC0415

    item_dir, key, flat = _orbax_metadata(path)
    if names is not None:
        flat = {name: m for name, m in flat.items() if name in names}

    def restore_args(name: str, meta: Any) -> Any:
        cast = checkpoint_tree.dtype_for(dtype, name)
        if shardings is None:
            return ocp.RestoreArgs(restore_type=np.ndarray, dtype=cast)
        return ocp.ArrayRestoreArgs(
            sharding=shardings[name], global_shape=tuple(meta.shape), dtype=cast
        )

    item = checkpoint_tree.unflatten(
        {n: jax.ShapeDtypeStruct(m.shape, m.dtype) for n, m in flat.items()}
    )
    args = checkpoint_tree.unflatten({n: restore_args(n, m) for n, m in flat.items()})
    if key:
        item, args = {key: item}, {key: args}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            item_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True),
        )
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise checkpoint_tree.CheckpointError(
            f"Orbax cannot restore {item_dir} ({e}): a file is missing, truncated or corrupt."
        ) from e
    restored = checkpoint_tree.flatten(restored[key] if key else restored)
    if shardings is None:
        return {name: np.asarray(value) for name, value in restored.items()}
    return restored


def read_orbax_step(path: str) -> int | None:
    """The step of an orbax (new T5X) checkpoint (`state/step` of its tree), or None when absent.

    Args:
      path: the checkpoint folder, or a step folder holding a `state/` item (see `load_orbax`).

    Raises:
      CheckpointError: no orbax item is found or orbax cannot restore the step.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415

    item_dir = find_orbax_item(path)
    if item_dir is None:
        raise checkpoint_tree.CheckpointError(f"{path} holds no orbax checkpoint (_METADATA).")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(item_dir)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = dict(getattr(tree, "tree", tree))
        state = tree.get("state")
        if not isinstance(state, Mapping) or "step" not in state:
            return None
        item = {"state": {"step": np.zeros((), np.int64)}}
        args = {"state": {"step": ocp.RestoreArgs(restore_type=np.ndarray)}}
        restored = checkpointer.restore(
            item_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True),
        )
    except (ValueError, OSError, KeyError, TypeError) as e:
        message = f"Orbax cannot restore the step of {item_dir}: {e}"
        raise checkpoint_tree.CheckpointError(message) from e
    return t5x_format.as_step(restored["state"]["step"], f"{item_dir}: state/step")
