"""Device mesh, logical-axis rules and shardings: T5X's partitioning on one ("data", "model") mesh.

The mesh has two axes: "data" (batch parallelism) and "model" (tensor parallelism over
`num_partitions` devices, T5X's `num_partitions`, or a `model_parallel_submesh` of a TPU slice).
Training, evaluation, inference and prompt ensembles all run on it, across every process.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and so do the model's
activations (`prompt_tuning.t5.sharding.constrain`); `standard_logical_axis_rules()` (T5X's
function of that name) maps both to mesh axes in one table. With
`activation_partitioning_dims=2` (the default here) the hidden states `[B, L, H]` are also split
over "model" along H, so adding a model axis lowers per-device activation memory instead of
replicating every activation on each model shard; parameters keep T5X's 1-D partitioning (vocab,
mlp, heads, joined_kv over "model").

Prompt axes (`prompt`, `prompt_embed` and every other `prompt_*` axis: `prompt_rank`,
`prompt_tasks`, ...) are replicated: a prompt is tiny ([P, H], ~0.1% of the model), every device
needs all of it at the start of the encoder, and a replicated prompt keeps its gradient and
optimizer update local after one all-reduce over "data", instead of adding collectives to every
step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from prompt_tuning.t5 import sharding

DATA_AXIS = "data"
MODEL_AXIS = "model"
Rules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 2,
) -> tuple[tuple[str, str | None], ...]:
    """Logical axis -> mesh axis rules, in priority order (T5X's `standard_logical_axis_rules`).

    Args:
      activation_partitioning_dims: 1 keeps activations split over "data" only (T5X's default);
        2 also splits the hidden dim H of activations over "model" (`embed` -> "model"; as a
        last-priority rule it never takes "model" from a kernel's mlp/heads/joined_kv axis).

    Returns:
      The rules; every `prompt*` axis is replicated.

    Raises:
      ValueError: `activation_partitioning_dims` is not 1 or 2.
    """
    if activation_partitioning_dims not in (1, 2):
        raise ValueError(
            f"activation_partitioning_dims must be 1 or 2, got {activation_partitioning_dims}."
        )
    rules = [
        ("batch", DATA_AXIS),
        ("vocab", MODEL_AXIS),
        ("mlp", MODEL_AXIS),
        ("heads", MODEL_AXIS),
        ("kv", None),
        ("joined_kv", MODEL_AXIS),
        ("embed", MODEL_AXIS if activation_partitioning_dims == 2 else None),
    ]
    rules += [
        (name, None) for name in ("relpos_buckets", "length", "layers", "mlp_activations", "tasks")
    ]
    return tuple(rules)


LOGICAL_AXIS_RULES = standard_logical_axis_rules()


# ----------------------------------------------------------------------------------------------
# The mesh.


def _submesh_grid(devices: Sequence[Any], submesh: Sequence[int]) -> np.ndarray:
    """Devices arranged [data, model]: each row is one `(x, y, z, core)` block of a TPU slice.

    T5X's `model_parallel_submesh`: the model axis is a block of the physical topology (so its
    collectives stay on neighbouring chips), the data axis runs over the blocks.

    Raises:
      ValueError: the devices have no TPU coordinates, or the block does not tile the slice.
    """
    if len(submesh) != 4 or not all(getattr(d, "coords", None) is not None for d in devices):
        raise ValueError(
            f"model_parallel_submesh={tuple(submesh)} needs TPU devices (with coords) and four "
            "sizes (x, y, z, cores); elsewhere set NUM_PARTITIONS instead."
        )
    position = lambda d: (*d.coords, getattr(d, "core_on_chip", 0))  # noqa: E731
    extent = [max(position(d)[i] for d in devices) + 1 for i in range(4)]
    if any(e % s for e, s in zip(extent, submesh)):
        raise ValueError(
            f"model_parallel_submesh={tuple(submesh)} does not tile the slice's (x, y, z, cores) "
            f"= {tuple(extent)}; each size must divide the slice's."
        )
    key = lambda d: (  # noqa: E731
        tuple(p // s for p, s in zip(position(d), submesh)),
        tuple(p % s for p, s in zip(position(d), submesh)),
    )
    ordered = sorted(devices, key=key)
    return np.array(ordered, dtype=object).reshape(-1, math.prod(submesh))


def make_mesh(
    num_partitions: int = 1,
    devices: Sequence[jax.Device] | None = None,
    model_parallel_submesh: Sequence[int] | None = None,
) -> Mesh:
    """The ("data", "model") mesh over all devices of every process.

    Devices are taken in `jax.devices()` order (process by process), so a model axis that
    divides a process's device count stays inside that process.

    Args:
      num_partitions: devices per model replica (the "model" axis size), as in T5X.
      devices: devices to use (default `jax.devices()`).
      model_parallel_submesh: T5X's `(x, y, z, cores)` block of a TPU slice for the model axis
        (instead of `num_partitions`).

    Returns:
      A mesh of shape [len(devices) // num_partitions, num_partitions].

    Raises:
      ValueError: `num_partitions` does not divide the device count (the divisors are listed).
    """
    devices = list(jax.devices() if devices is None else devices)
    if model_parallel_submesh is not None:
        if num_partitions not in (1, math.prod(model_parallel_submesh)):
            raise ValueError("Set NUM_PARTITIONS or model_parallel_submesh, not both (T5X's rule).")
        return Mesh(_submesh_grid(devices, model_parallel_submesh), (DATA_AXIS, MODEL_AXIS))
    count = len(devices)
    if num_partitions < 1 or count % num_partitions:
        divisors = [d for d in range(1, count + 1) if count % d == 0]
        raise ValueError(
            f"NUM_PARTITIONS={num_partitions} does not divide the {count} devices "
            f"({jax.process_count()} process(es)); use one of {divisors}."
        )
    grid = np.array(devices, dtype=object).reshape(count // num_partitions, num_partitions)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How a run lays its devices out (the entry points' mesh settings, typed).

    Attributes:
      num_partitions: NUM_PARTITIONS, devices per model replica (the "model" axis size).
      model_parallel_submesh: T5X's `(x, y, z, cores)` TPU block for the model axis instead.
      num_devices: use only the first N devices of `jax.devices()` (None: all of them).
      activation_partitioning_dims: see `standard_logical_axis_rules` (2: the default here).
    """

    num_partitions: int = 1
    model_parallel_submesh: tuple[int, ...] | None = None
    num_devices: int | None = None
    activation_partitioning_dims: int = 2

    def make(self) -> Mesh:
        """The mesh (`make_mesh`).

        Raises:
          ValueError: NUM_PARTITIONS does not divide the devices (`make_mesh`).
        """
        devices = jax.devices()[: self.num_devices] if self.num_devices else None
        return make_mesh(self.num_partitions, devices, self.model_parallel_submesh)

    def rules(self) -> tuple[tuple[str, str | None], ...]:
        """The logical axis rules (`standard_logical_axis_rules`)."""
        return standard_logical_axis_rules(self.activation_partitioning_dims)


def check_model_fits_mesh(config: Any, mesh: Mesh) -> None:
    """Stops before any work when the "model" axis cannot split the attention heads.

    Args:
      config: the model's `T5Config`.
      mesh: the device mesh.

    Raises:
      ValueError: NUM_PARTITIONS does not divide the number of heads (usable values listed).
    """
    model, heads = mesh.shape[MODEL_AXIS], config.num_heads
    if heads % model:
        usable = [d for d in range(1, mesh.size + 1) if heads % d == 0 and mesh.size % d == 0]
        raise ValueError(
            f"NUM_PARTITIONS={model} does not divide the model's {heads} attention heads "
            f"(T5Config.num_heads); use one of {usable}."
        )


def check_batch_fits_mesh(batch_size: int, mesh: Mesh, macro: str = "BATCH_SIZE") -> None:
    """Stops before any work when the batch does not split over the "data" axis.

    Raises:
      ValueError: naming the batch, the data-parallel size and the nearest valid batch sizes.
    """
    data = mesh.shape[DATA_AXIS]
    if batch_size < 1 or batch_size % data:
        lower, upper = batch_size // data * data, (batch_size // data + 1) * data
        fixes = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(
            f"{macro} {batch_size} is not divisible by the data-parallel size {data} "
            f"({mesh.size} devices / NUM_PARTITIONS {mesh.shape[MODEL_AXIS]}); use a multiple of "
            f"{data}, e.g. {fixes}."
        )


def evaluation_batch_size(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the "data" axis, for evaluation and inference.

    Their last batch is padded anyway (only the real rows are read back), so padding every batch
    to a size the data axis divides costs a few rows instead of an error; a training batch must
    divide (`check_batch_fits_mesh`), since its size is part of the recipe.
    """
    data = mesh.shape[DATA_AXIS]
    return -(-batch_size // data) * data


# ----------------------------------------------------------------------------------------------
# Shardings.


def _mesh_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules) -> P:
    """Parameter spec: `prompt*` axes replicated, every other name needs a rule."""
    if names is None:
        return P(*([None] * len(shape)))
    names = [None if n is not None and n.startswith("prompt") else n for n in names]
    return sharding.logical_to_mesh_spec(names, shape, dict(mesh.shape), rules)


def logical_to_mesh_spec(
    logical: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules | None = None,
) -> P:
    """Mesh PartitionSpec for an array with the given logical axes.

    A dimension whose size the mesh axis does not divide (e.g. a 6-head model on 4 "model"
    devices) is replicated instead, and a mesh axis is used at most once.

    Args:
      logical: logical axis names per dimension (None: unannotated, replicated).
      shape: the array's shape.
      mesh: the device mesh.
      rules: logical -> mesh axis rules (default `standard_logical_axis_rules()`).

    Returns:
      A `PartitionSpec` with one entry per dimension.

    Raises:
      ValueError: a logical axis has no rule.
    """
    return _mesh_spec(logical, shape, mesh, rules or standard_logical_axis_rules())


def params_shardings(boxed_params: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """NamedShardings for a parameter tree from its logical axes.

    Args:
      boxed_params: parameters (or `jax.eval_shape` structs) as returned by the module's init, with
        `nn.LogicallyPartitioned` boxes; unboxed leaves are replicated.
      mesh: the device mesh.
      rules: logical -> mesh axis rules (default `standard_logical_axis_rules()`).

    Returns:
      A tree like `nn.unbox(boxed_params)` of `NamedSharding`s.
    """
    rules = rules or standard_logical_axis_rules()

    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, _mesh_spec(leaf.names, leaf.value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a fully replicated value (scalars, RNG keys, optimizer state of prompts)."""
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: the leading (batch) dimension split over "data"."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shardings_of(tree: Any) -> Any:
    """The sharding of every array in `tree`."""
    return jax.tree.map(lambda x: x.sharding, tree)


def _dict_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
    """The trailing dictionary keys of a key path (`(..., 'encoder', 'prompt', 'prompt')`)."""
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(str(entry.key))
    return tuple(reversed(keys))


def opt_state_shardings(optimizer: optax.GradientTransformation, trainable: Any, mesh: Mesh) -> Any:
    """Shardings of the optimizer state of `trainable` (sharded arrays).

    A state leaf is matched to its parameter by tree path (optax keeps a parameter's moments under
    that parameter's path, e.g. `[0].mu['encoder']['prompt']['prompt']`): a leaf of its
    parameter's shape gets its sharding. Factored statistics (other shapes), counters and the
    learning rate are replicated (for prompts everything ends up replicated).

    Args:
      optimizer: the optax transformation.
      trainable: the trainable parameters, already placed on the mesh.
      mesh: the device mesh.

    Returns:
      A tree like `optimizer.init(trainable)` of shardings.
    """
    by_path = {
        _dict_keys(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(trainable)[0]
    }

    def one(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> jax.sharding.Sharding:
        keys = _dict_keys(path)
        for start in range(len(keys)):
            param = by_path.get(keys[start:])
            if param is not None:
                if tuple(param.shape) == tuple(leaf.shape):
                    return param.sharding
                break
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, jax.eval_shape(optimizer.init, trainable))


# ----------------------------------------------------------------------------------------------
# Activation constraints.


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules | None = None) -> Iterator[None]:
    """Makes the model's logical activation constraints act on `mesh` (enter while tracing).

    Sets flax's logical-axis rules and the abstract mesh that `t5.sharding.constrain` reads; it
    may be entered inside a jitted function.
    """
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        with nn.logical_axis_rules(rules or standard_logical_axis_rules()):
            yield


def on_mesh(fn: Callable[..., Any], mesh: Mesh, rules: Rules | None = None) -> Callable[..., Any]:
    """`fn` traced under `activation_sharding(mesh)`: jit the result, not `fn`.

    Entering the rules inside the traced function ties them to this function's trace (jit's cache
    knows nothing of context managers entered around a call).
    """
    rules = rules or standard_logical_axis_rules()

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with activation_sharding(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


# ----------------------------------------------------------------------------------------------
# Host values <-> global arrays.


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values (the same on every process) as fully replicated global arrays on `mesh`."""
    sharding = replicated(mesh)

    def one(value: Any) -> jax.Array:
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(one, tree)


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A whole batch that every process holds, as global arrays split over "data".

    Each process hands over only its own devices' rows (evaluation and inference, where every
    process reads the same examples).
    """
    sharding = data_sharding(mesh)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_callback(value.shape, sharding, lambda i, v=value: v[i])
    return out


def shard_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, global_batch_size: int | None = None
) -> dict[str, jax.Array]:
    """Turns this process's part of a batch into global arrays split over "data".

    Each process passes the rows of its data-parallel replica set (`distributed.data_layout`:
    processes of one replica set pass the same rows).

    Args:
      batch: host-local arrays with a leading batch dimension.
      mesh: the device mesh.
      global_batch_size: the global batch (default: the local rows times the process count).

    Returns:
      Global `jax.Array`s sharded by `data_sharding(mesh)`.
    """
    sharding = data_sharding(mesh)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        shape = None
        if global_batch_size is not None:
            shape = (global_batch_size, *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def to_host(tree: Any) -> Any:
    """Numpy copies of replicated (or single-process) arrays, on every process.

    Raises:
      ValueError: an array is split over devices of several processes (this would gather it).
    """

    def one(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        raise ValueError(
            f"An array of shape {x.shape} is split over several processes ({x.sharding}); "
            "fetching it to one host would gather it."
        )

    return jax.tree.map(one, tree)
