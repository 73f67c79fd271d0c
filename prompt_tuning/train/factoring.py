"""Adafactor's second moments, factored per parameter as its logical axes decide.

T5X's Adafactor factors a parameter's second moment v [R, C] into row and column statistics
(memory R + C instead of R * C) by rules over the parameter's logical axis names
(`logical_factor_rules`, its `standard_logical_factor_rules`); the prompt tuning code of Lester et
al. (2021) adds `prompt: NONE`, so a prompt's second moment is never factored, however long the
prompt. optax's Adafactor instead factors any matrix whose two largest dimensions are >= 128, which
factors a [P, H] prompt once P >= 128 (their prompt-length ablation goes to 150).
`scale_by_factored_rms` is Adafactor's scaling with the factoring decided per parameter by
`factor_dims`; `optimizers.Adafactor` chains it with clipping, the schedule and weight decay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Factoring rules by logical axis (T5X's `adafactor.standard_logical_factor_rules`): a parameter's
# second moment is factored into row and column statistics over its ROW and COLUMN axes, BATCH axes
# (stacked layers) are kept apart, and NONE axes are never factored. Every `prompt*` axis is NONE:
# the factor rules of Lester et al.'s code (prompt_tuning/train/optim.py) map `prompt` to NONE.
ROW, COLUMN, BATCH, NONE = "row", "column", "batch", "none"
FACTOR_RULES: dict[str, str] = {
    "vocab": COLUMN,
    "embed": ROW,
    "mlp": COLUMN,
    "heads": COLUMN,
    "kv": COLUMN,
    "joined_kv": COLUMN,
    "relpos_buckets": NONE,
    "layers": BATCH,
    "stack": BATCH,
    "mlp_activations": COLUMN,
    "layer_norm_scale": NONE,
    "tasks": NONE,
}
FactorDims = tuple[tuple[int, ...], tuple[int, ...]]


def _size_heuristic(shape: tuple[int, ...], min_dim_size_to_factor: int) -> FactorDims | None:
    """T5X's and optax's default: factor over the two largest dims when both are >= the minimum."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return (int(order[-2]),), (int(order[-1]),)


def factor_dims(
    axes: tuple[str | None, ...] | None,
    shape: tuple[int, ...],
    min_dim_size_to_factor: int = 128,
    rules: Mapping[str, str] = FACTOR_RULES,
    path: str = "",
) -> FactorDims | None:
    """The (row dims, column dims) a parameter's second moment is factored over, or None.

    Decided by the parameter's logical axes, as T5X's Adafactor with `logical_factor_rules`:
    - any `prompt*` axis: never factored (Lester et al.'s rule `prompt: NONE`; today's T5X would
      send a 2-D prompt to its size heuristic like any rank <= 2 parameter, and factor a [P, H]
      prompt with P, H >= 128);
    - rank <= 2 without BATCH axes: T5X's size heuristic (T5X ignores the rule for these);
    - otherwise factored over the ROW and COLUMN axes when it has both, else not factored;
    - no axes (an unannotated parameter): the size heuristic.

    Args:
      axes: logical axis names, one per dimension (None: unannotated).
      shape: the parameter's shape.
      min_dim_size_to_factor: T5X's minimum dimension size for the size heuristic.
      rules: logical axis -> ROW, COLUMN, BATCH or NONE.
      path: the parameter's path (for messages).

    Returns:
      `((row dims), (column dims))`, or None for an unfactored second moment.

    Raises:
      ValueError: an axis without a rule, or ROW and COLUMN mixed with NONE axes (T5X's
        "incomplete adafactor spec").
    """
    if axes is None:
        return _size_heuristic(shape, min_dim_size_to_factor)
    if any(axis is not None and axis.startswith("prompt") for axis in axes):
        return None
    unknown = [axis for axis in axes if axis is not None and axis not in rules]
    if unknown:
        raise ValueError(
            f"Parameter {path} has logical axis {unknown[0]!r}, which has no Adafactor factor "
            "rule; add it to factoring.FACTOR_RULES (ROW, COLUMN, BATCH or NONE)."
        )
    kinds = [NONE if axis is None else rules[axis] for axis in axes]
    rows = tuple(i for i, kind in enumerate(kinds) if kind == ROW)
    cols = tuple(i for i, kind in enumerate(kinds) if kind == COLUMN)
    if rows and cols and NONE in kinds:
        raise ValueError(
            f"Incomplete Adafactor factor rule {tuple(kinds)} for parameter {path} {axes}: ROW "
            "and COLUMN axes beside unfactored ones."
        )
    if len(shape) <= 2 and BATCH not in kinds:
        return _size_heuristic(shape, min_dim_size_to_factor)
    return (rows, cols) if rows and cols else None


class _Stats(NamedTuple):
    """One parameter's update and second-moment statistics (placeholders where unused)."""

    update: Any
    v_row: Any
    v_col: Any
    v: Any


def _decay(step: jax.Array, exponent: float) -> jax.Array:
    """Adafactor's second-moment decay 1 - (t + 1)^-exponent at step t."""
    return 1.0 - (jnp.asarray(step, jnp.float32) + 1.0) ** (-exponent)


def scale_by_factored_rms(
    dims_of: Any, decay_rate: float = 0.8, step_offset: int = 0, epsilon: float = 1e-30
) -> optax.GradientTransformation:
    """Adafactor's scaling g / sqrt(v), with v factored per parameter as `dims_of` decides.

    v_t = d_t v_{t-1} + (1 - d_t)(g^2 + epsilon), d_t = 1 - (t + 1 - step_offset)^-decay_rate.
    Factored over (rows R, columns C): v_row = that recursion on mean_C(g^2 + epsilon), v_col on
    mean_R(g^2 + epsilon), and v ~ v_row v_col / mean_R(v_row) (T5X's `apply_param_gradient`).
    The state has optax's `FactoredState` layout ((1,) placeholders for the unused statistics).

    Args:
      dims_of: `(key path, shape) -> FactorDims | None` for each parameter.
      decay_rate: the exponent of the decay schedule.
      step_offset: subtracted from the step in the decay schedule.
      epsilon: added to squared gradients.

    Returns:
      An optax transformation.
    """
    empty = lambda x: jnp.zeros((1,), x.dtype)  # noqa: E731

    def init(params: Any) -> optax.FactoredState:
        def stats(path: Any, param: jax.Array) -> _Stats:
            dims = dims_of(path, param.shape)
            if dims is None:
                return _Stats(None, empty(param), empty(param), jnp.zeros_like(param))
            rows, cols = dims
            v_row = jnp.zeros(np.delete(param.shape, cols), param.dtype)
            v_col = jnp.zeros(np.delete(param.shape, rows), param.dtype)
            return _Stats(None, v_row, v_col, empty(param))

        out = jax.tree_util.tree_map_with_path(stats, params)
        pick = lambda name: jax.tree.map(  # noqa: E731
            lambda o: getattr(o, name), out, is_leaf=lambda x: isinstance(x, _Stats)
        )
        return optax.FactoredState(
            jnp.zeros([], jnp.int32), pick("v_row"), pick("v_col"), pick("v")
        )

    def update(grads: Any, state: optax.FactoredState, params: Any = None) -> tuple[Any, Any]:
        del params
        decay = _decay(state.count - step_offset, decay_rate)

        def one(path, grad, v_row, v_col, v):
            squared = grad * grad + epsilon
            dims = dims_of(path, grad.shape)
            if dims is None:
                v = (decay * v + (1.0 - decay) * squared).astype(v.dtype)
                return _Stats(grad * v**-0.5, v_row, v_col, v)
            rows, cols = dims
            v_row = (decay * v_row + (1.0 - decay) * jnp.mean(squared, axis=cols)).astype(
                v_row.dtype
            )
            v_col = (decay * v_col + (1.0 - decay) * jnp.mean(squared, axis=rows)).astype(
                v_col.dtype
            )
            reduced_rows = tuple(d - sum(c < d for c in cols) for d in rows)  # rows of v_row
            row_factor = (v_row / jnp.mean(v_row, axis=reduced_rows, keepdims=True)) ** -0.5
            update = grad * jnp.expand_dims(row_factor, cols) * jnp.expand_dims(v_col**-0.5, rows)
            return _Stats(update, v_row, v_col, v)

        out = jax.tree_util.tree_map_with_path(one, grads, state.v_row, state.v_col, state.v)
        pick = lambda name: jax.tree.map(  # noqa: E731
            lambda o: getattr(o, name), out, is_leaf=lambda x: isinstance(x, _Stats)
        )
        count = optax.safe_increment(state.count)
        return pick("update"), optax.FactoredState(count, pick("v_row"), pick("v_col"), pick("v"))

    return optax.GradientTransformation(init, update)
