"""Mixed precision for the T5's matmuls: `contract` (bfloat16 operands, float32 accumulation).

`contract` is every matmul and einsum of `prompt_tuning.t5.layers`: in float32 a plain einsum; in
bfloat16 (T5X's ACTIVATION_DTYPE) the operands are cast to bfloat16 and the product accumulates in
float32, forward and backward (a custom VJP casts the cotangent), as T5X computes on TPU and as
XLA:CPU's fast bfloat16 dots require. `cast_matmul_weights` stores the frozen matmul weights in
bfloat16 (FROZEN_DTYPE). See docs/performance.md for what this changes in a training step.
"""

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def _batched_matmul(spec: str, a: Array, b: Array) -> Array:
    """`einsum(spec, a, b)` in float32 as one row-major batched matmul `[G, M, K] @ [G, K, N]`.

    The operands are transposed to (batch, free, contracted) and (batch, contracted, free) order
    and flattened to 3-D. XLA:CPU runs a bfloat16 x bfloat16 -> float32 dot fast only in its
    YNNPACK fusions, which take exactly this canonical row-major form; any other dot it converts to
    float32 (slow) or, for some layouts, fails on ("Unsupported element type for DotThunk").
    """
    inputs, out = spec.split("->")
    spec_a, spec_b = inputs.split(",")
    batch = [c for c in spec_a if c in spec_b and c in out]
    contracted = [c for c in spec_a if c in spec_b and c not in out]
    free_a = [c for c in spec_a if c not in spec_b]
    free_b = [c for c in spec_b if c not in spec_a]
    size = dict(zip(spec_a, a.shape, strict=True)) | dict(zip(spec_b, b.shape, strict=True))
    extent = lambda axes: math.prod(size[c] for c in axes)  # noqa: E731
    order_a = [spec_a.index(c) for c in batch + free_a + contracted]
    order_b = [spec_b.index(c) for c in batch + contracted + free_b]
    # Materialise a transposed `a`: XLA would otherwise fold the transpose back into the dot's
    # dimension numbers, and a transposed left operand keeps the dot out of the fast kernels.
    if order_a != sorted(order_a):
        a = jax.lax.optimization_barrier(jnp.transpose(a, order_a))
    b = jnp.transpose(b, order_b)
    # Also without batch axes (G = 1): XLA:CPU then keeps the dot in YNNPACK, where a plain 2-D
    # backward dot was converted to float32 (checked on T5 1.1 small).
    a = a.reshape(extent(batch), extent(free_a), extent(contracted))  # [G, M, K]
    b = b.reshape(extent(batch), extent(contracted), extent(free_b))  # [G, K, N]
    y = jax.lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    produced = batch + free_a + free_b  # the axes of y, once unflattened
    y = y.reshape([size[c] for c in produced])
    return jnp.transpose(y, [produced.index(c) for c in out])


# How `contract` lays out a mixed-precision matmul: "batched" (`_batched_matmul`, the row-major
# form XLA:CPU needs for its fast bfloat16 dots) or "einsum" (one `dot_general` whose layout the
# compiler picks: GPU and TPU compilers do that themselves, and the forced transposes and
# optimisation barriers of the batched form only add copies there). Chosen from JAX's default
# backend when a function is traced; MATMUL_LAYOUT_ENV overrides it (benchmarks compare both).
MATMUL_LAYOUT_ENV = "PROMPT_TUNING_MATMUL_LAYOUT"
MATMUL_LAYOUTS = ("batched", "einsum")


def matmul_layout() -> str:
    """The layout of mixed-precision matmuls traced now ("batched" on the CPU, else "einsum").

    Raises:
      ValueError: PROMPT_TUNING_MATMUL_LAYOUT is set to something else than the two layouts.
    """
    choice = os.environ.get(MATMUL_LAYOUT_ENV, "").strip().lower()
    if choice and choice not in MATMUL_LAYOUTS:
        raise ValueError(
            f"{MATMUL_LAYOUT_ENV}={os.environ[MATMUL_LAYOUT_ENV]!r} is not one of "
            f"{', '.join(MATMUL_LAYOUTS)}; unset it to choose by JAX's default backend."
        )
    return choice or ("batched" if jax.default_backend() == "cpu" else "einsum")


def _mixed_matmul(spec: str, a: Array, b: Array) -> Array:
    """`einsum(spec, a, b)` accumulated and returned in float32, in `matmul_layout()`."""
    if matmul_layout() == "batched":
        return _batched_matmul(spec, a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _contract_mixed(spec: str, dtype: Any, name: str, a: Array, b: Array) -> Array:
    """`einsum(spec, a, b)` on `dtype` operands accumulated in float32 (see `contract`)."""
    with jax.named_scope(name):
        return _mixed_matmul(spec, a.astype(dtype), b.astype(dtype))


def _contract_mixed_fwd(spec: str, dtype: Any, name: str, a: Array, b: Array):
    # Custom-VJP rules lose the caller's name stack: `name` puts it back into the HLO's op_name
    # metadata, so profiles attribute these dots (prompt_tuning.perf.profiling).
    with jax.named_scope(name):
        a_low, b_low = a.astype(dtype), b.astype(dtype)
        out = _mixed_matmul(spec, a_low, b_low)
    # Residuals in `dtype` (half the memory of float32 inputs); zero-size arrays carry the
    # operands' own dtypes to the backward pass.
    dtypes = (jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))
    return out, (a_low, b_low, dtypes)


def _contract_mixed_bwd(spec: str, dtype: Any, name: str, residuals, g: Array):
    """`dA = g·B` and `dB = g·A` with `g` cast to `dtype`, accumulated in float32.

    Each gradient is returned in its operand's own dtype: a float32 operand (the softmax output,
    the MLP's activations) gets a float32 gradient, so the softmax backward, which subtracts
    nearly equal terms, never sees a gradient rounded to bfloat16. Without this rule, autodiff
    would contract the float32 cotangent with a bfloat16 operand, which XLA runs as a float32
    matmul after converting the operand.
    """
    a, b, (a_dtype, b_dtype) = residuals
    inputs, out = spec.split("->")
    spec_a, spec_b = inputs.split(",")
    with jax.named_scope(f"transpose({name})"):
        g = g.astype(dtype)
        grad_a = _mixed_matmul(f"{out},{spec_b}->{spec_a}", g, b)
        grad_b = _mixed_matmul(f"{out},{spec_a}->{spec_b}", g, a)
        return grad_a.astype(a_dtype.dtype), grad_b.astype(b_dtype.dtype)


_contract_mixed.defvjp(_contract_mixed_fwd, _contract_mixed_bwd)


def contract(spec: str, a: Array, b: Array, dtype: Any, name: str = "contract") -> Array:
    """`jnp.einsum(spec, a, b)` on operands cast to `dtype`, accumulated and returned in float32.

    In float32 this is a plain einsum. In a narrower dtype (bfloat16) the product accumulates in
    float32 (`preferred_element_type`): the precision and speed of T5X on TPU and of XLA:CPU's
    fast bfloat16 matmuls. The backward matmuls also take `dtype` operands (the cotangent is cast)
    and accumulate in float32; each gradient comes back in its operand's dtype. `spec` names
    every axis with one letter (no `...`), and every axis of an operand appears in the other
    operand or in the output.

    Args:
      spec: einsum equation of two operands, e.g. "bsnk,btnk->bnst".
      a: first operand (any float dtype).
      b: second operand (any float dtype).
      dtype: the operands' matmul dtype (float32 or bfloat16).
      name: where it is (e.g. the Flax module path), for the op names in profiles.

    Returns:
      The float32 result.
    """
    if jnp.dtype(dtype) == jnp.float32:
        a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    return _contract_mixed(spec, jnp.dtype(dtype), name, a, b)


# Parameters used only as matmul operands (cast to the activation dtype at use). FROZEN_DTYPE
# stores these in bfloat16; RMS-norm `scale`s and relative-position `rel_embedding` tables are used
# in float32 and stay float32 (they are tiny, and rounding them changes what the model computes).
MATMUL_WEIGHTS = frozenset({"kernel", "embedding"})


def matmul_weight_dtype(name: str, dtype: Any) -> Any:
    """What FROZEN_DTYPE makes of the parameter `name` ("a/b/kernel"): `dtype` for a matmul
    weight, None (as stored) for the rest."""
    return dtype if name.rsplit("/", 1)[-1] in MATMUL_WEIGHTS else None


def cast_matmul_weights(params: dict, dtype: Any, consume: bool = False) -> dict:
    """`params` (a nested dict) with its `MATMUL_WEIGHTS` leaves cast to `dtype` (None: as is).

    With `consume=True` the dicts of `params` are emptied as their leaves move to the result, so
    each float32 leaf can be freed as soon as its cast exists (loading a checkpoint never holds
    two copies of the model).
    """
    if dtype is None:
        return params
    out = {}
    for name in list(params):
        value = params.pop(name) if consume else params[name]
        if isinstance(value, dict):
            out[name] = cast_matmul_weights(value, dtype, consume)
        else:
            out[name] = value.astype(dtype) if name in MATMUL_WEIGHTS else value
        del value
    return out
