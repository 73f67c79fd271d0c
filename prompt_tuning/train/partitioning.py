"""Device mesh and logical-axis rules (T5X's 1-D parameter / 1-D activation partitioning).

The mesh has two axes: "data" (batch parallelism) and "model" (tensor parallelism over
`num_partitions` devices, T5X's `num_partitions`). Every parameter carries logical axis names
(`nn.with_logical_partitioning`); `LOGICAL_AXIS_RULES` maps them to mesh axes in one table.

Prompt axes (`prompt`, `prompt_embed` and every other `prompt_*` axis: `prompt_rank`,
`prompt_tasks`, ...) are replicated: a prompt is tiny ([P, H], ~0.1% of the model), every device
needs all of it at the start of the encoder, and a replicated prompt keeps its gradient and
optimizer update local after one all-reduce over "data", instead of adding collectives to every
step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"

# Logical axis -> mesh axis (None: replicated). T5X's standard rules for 1-D partitioning.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA_AXIS),
    ("vocab", MODEL_AXIS),
    ("embed", None),
    ("mlp", MODEL_AXIS),
    ("heads", MODEL_AXIS),
    ("kv", None),
    ("joined_kv", MODEL_AXIS),
    ("relpos_buckets", None),
    ("length", None),
    ("layers", None),
    ("mlp_activations", None),
    ("tasks", None),
    # Prompt parameters: replicated (see the module docstring).
    ("prompt", None),
    ("prompt_embed", None),
)


def make_mesh(num_partitions: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh over all devices (of every host).

    Args:
      num_partitions: devices per model replica (the "model" axis size), as in T5X.
      devices: devices to use (default `jax.devices()`).

    Returns:
      A mesh of shape [len(devices) // num_partitions, num_partitions].

    Raises:
      ValueError: the device count is not a multiple of `num_partitions`.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_partitions < 1 or len(devices) % num_partitions:
        raise ValueError(
            f"num_partitions={num_partitions} must divide the {len(devices)} available devices."
        )
    grid = np.array(devices).reshape(len(devices) // num_partitions, num_partitions)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def _rule_for(axis: str | None, rules: Sequence[tuple[str, str | None]]) -> str | None:
    """Mesh axis of one logical axis; every `prompt*` axis is replicated.

    Raises:
      ValueError: the axis has no rule.
    """
    if axis is None or axis.startswith("prompt"):
        return None
    for name, mesh_axis in rules:
        if name == axis:
            return mesh_axis
    raise ValueError(
        f"Logical axis {axis!r} has no partitioning rule; add it to "
        "prompt_tuning.train.partitioning.LOGICAL_AXIS_RULES."
    )


def logical_to_mesh_spec(
    logical: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES,
) -> P:
    """Mesh PartitionSpec for an array with the given logical axes.

    A dimension whose size the mesh axis does not divide (e.g. a 6-head model on 4 "model"
    devices) is replicated instead, and a mesh axis is used at most once.

    Args:
      logical: logical axis names per dimension (None: unannotated, replicated).
      shape: the array's shape.
      mesh: the device mesh.
      rules: logical -> mesh axis rules.

    Returns:
      A `PartitionSpec` with one entry per dimension.
    """
    if logical is None:
        return P(*([None] * len(shape)))
    spec, used = [], set()
    for axis, size in zip(logical, shape):
        mesh_axis = _rule_for(axis, rules)
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
            spec.append(None)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
    return P(*spec)


def params_shardings(
    boxed_params: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES
) -> Any:
    """NamedShardings for a parameter tree from its logical axes.

    Args:
      boxed_params: parameters (or `jax.eval_shape` structs) as returned by the module's init, with
        `nn.LogicallyPartitioned` boxes; unboxed leaves are replicated.
      mesh: the device mesh.
      rules: logical -> mesh axis rules.

    Returns:
      A tree like `nn.unbox(boxed_params)` of `NamedSharding`s.
    """

    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.LogicallyPartitioned):
            shape = leaf.value.shape
            return NamedSharding(mesh, logical_to_mesh_spec(leaf.names, shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a fully replicated value (scalars, RNG keys, optimizer state of prompts)."""
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: the leading (batch) dimension split over "data"."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this host's part of a batch into global arrays split over "data".

    On one host this is `jax.device_put` with `data_sharding`; on several, each host passes its
    own `batch_size // process_count` examples (`shard_id = jax.process_index()`).

    Args:
      batch: host-local arrays with a leading batch dimension.
      mesh: the device mesh.

    Returns:
      Global `jax.Array`s sharded by `data_sharding(mesh)`.
    """
    sharding = data_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


def shardings_of(tree: Any) -> Any:
    """The sharding of every array in `tree`."""
    return jax.tree.map(lambda x: x.sharding, tree)


def opt_state_shardings(optimizer: optax.GradientTransformation, trainable: Any, mesh: Mesh) -> Any:
    """Shardings of the optimizer state of `trainable` (sharded arrays).

    A moment shaped like a trainable parameter is sharded like it; counters, factored statistics
    and the learning rate are replicated (for prompts everything ends up replicated).

    Args:
      optimizer: the optax transformation.
      trainable: the trainable parameters, already placed on the mesh.
      mesh: the device mesh.

    Returns:
      A tree like `optimizer.init(trainable)` of shardings.
    """
    by_shape = {}
    for leaf in jax.tree.leaves(trainable):
        by_shape.setdefault(leaf.shape, leaf.sharding)

    def one(leaf: jax.ShapeDtypeStruct) -> jax.sharding.Sharding:
        return by_shape.get(leaf.shape, replicated(mesh)) if leaf.ndim else replicated(mesh)

    return jax.tree.map(one, jax.eval_shape(optimizer.init, trainable))
