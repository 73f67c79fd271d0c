"""Logical axis names -> mesh axes, for parameters and activations (T5X's logical partitioning).

Every parameter of the T5 is declared with logical axis names (`layers.py`), and the activations
that matter for memory carry them too: `constrain(x, ("batch", "length", "embed"))` is T5X's
`with_logical_constraint`. The names mean nothing until a caller maps them to mesh axes with a
table of rules, `(logical name, mesh axis or None)` in order of priority (flax's semantics: rules
are applied in order; a mesh axis is used at most once per array; a logical name may have several
rules, the first free one wins). The trainer's table lives in `prompt_tuning.parallel.partitioning`.

`constrain` reads the rules from flax's `nn.logical_axis_rules` context (also what T5X's
partitioner sets) and the mesh from `jax.set_mesh`; outside both it returns `x` unchanged, so the
model runs as before on one device and in plain `jax.jit`. A dimension the mesh axis does not
divide stays unsharded (a 6-head model on 4 "model" devices replicates its heads).

Activation names: `batch`, `length` (any sequence axis), `embed` (H), `heads` (N), `kv` (K),
`joined_kv` (N*K), `mlp` (F), `vocab` (V).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

Rules = Sequence[tuple[str, str | None]]


def logical_to_mesh_spec(
    logical: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    rules: Rules,
    strict: bool = True,
) -> PartitionSpec:
    """The mesh `PartitionSpec` of an array with the given logical axis names.

    Rules are applied in order (priority); a rule assigns its mesh axis to the array dimension of
    that logical name when the dimension is still unassigned, the mesh axis is unused by the array
    and divides the dimension's size. Unassigned dimensions are replicated.

    Args:
      logical: one logical name (or None) per dimension; None for an unannotated array.
      shape: the array's shape.
      mesh_shape: mesh axis name -> size (`mesh.shape`).
      rules: `(logical name, mesh axis or None)` pairs in priority order.
      strict: raise for a logical name that no rule mentions (a typo, or a rule to add).

    Returns:
      A `PartitionSpec` with one entry per dimension.

    Raises:
      ValueError: `strict` and a logical name has no rule, or a name occurs twice.
    """
    if logical is None:
        return PartitionSpec(*([None] * len(shape)))
    names = [name for name in logical if name is not None]
    if len(set(names)) != len(names):
        raise ValueError(f"Logical axes {tuple(logical)} name a dimension twice.")
    known = {name for name, _ in rules}
    if strict:
        for name in names:
            if name not in known:
                raise ValueError(
                    f"Logical axis {name!r} has no partitioning rule; add it to "
                    "prompt_tuning.parallel.partitioning.LOGICAL_AXIS_RULES."
                )
    spec: list[str | None] = [None] * len(shape)
    assigned = [False] * len(shape)
    used: set[str] = set()
    for name, mesh_axis in rules:
        for dim, dim_name in enumerate(logical):
            if dim_name != name or assigned[dim]:
                continue
            if mesh_axis is None:
                assigned[dim] = True  # explicitly replicated
            elif mesh_axis in mesh_shape and mesh_axis not in used:
                if shape[dim] % mesh_shape[mesh_axis] == 0:
                    spec[dim] = mesh_axis
                    assigned[dim] = True
                    used.add(mesh_axis)
    return PartitionSpec(*spec)


def _legacy_mesh() -> Any:
    """The mesh of a legacy `with mesh:` context (T5X's partitioner), or an empty one.

    JAX 0.10.2 keeps that context only in the private `jax._src.mesh.thread_resources`: the
    public getters (`jax.sharding.get_abstract_mesh`, `jax.sharding.get_mesh`) see `jax.set_mesh`
    alone, and `with mesh:` itself is deprecated. So this private read stays, guarded by
    tests/t5_sharding_test.py (`test_the_legacy_mesh_context_is_only_private`), which fails
    naming what changed; without it (a future JAX) the constraints are skipped under `with mesh:`.
    """
    try:
        from jax._src import mesh as mesh_lib  # noqa: PLC0415
    except ImportError:  # pragma: no cover - a JAX without the legacy context
        return jax.sharding.get_abstract_mesh()
    resources = getattr(mesh_lib, "thread_resources", None)
    mesh = getattr(getattr(resources, "env", None), "physical_mesh", None)
    if mesh is None:  # pragma: no cover - the guard test names this change
        return jax.sharding.get_abstract_mesh()
    return mesh


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """`x` with a sharding constraint from its logical axes (T5X's `with_logical_constraint`).

    A no-op unless flax logical-axis rules (`nn.logical_axis_rules`) and a mesh are both active
    while tracing — `jax.set_mesh` (our trainer, `parallel.partitioning.on_mesh`) or the legacy
    `with mesh:` context T5X's `PjitPartitioner` traces under (`prompt_tuning.t5x`) — and on a
    mesh whose only axis of size > 1 is the batch's.

    Args:
      x: an activation, e.g. `[B, L, H]`.
      logical: its logical axis names, e.g. `("batch", "length", "embed")`.

    Returns:
      `x`, constrained to the mesh axes the rules give.
    """
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        mesh = _legacy_mesh()
    if not rules or mesh.empty:
        return x
    batch_axis = dict(rules).get("batch")
    if all(size == 1 for name, size in mesh.shape.items() if name != batch_axis):
        # Pure data parallelism: activations follow the batch's sharding anyway, and the program
        # stays the one without constraints (bit-identical results).
        return x
    spec = logical_to_mesh_spec(logical, x.shape, dict(mesh.shape), rules, strict=False)
    return jax.lax.with_sharding_constraint(x, spec)
