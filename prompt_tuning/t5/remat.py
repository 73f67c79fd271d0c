"""Rematerialisation that stays in the backward pass: `call(layer, *inputs)`.

`nn.remat` (`jax.checkpoint`) saves only a layer's inputs and recomputes the rest in the backward
pass, but nothing ties that recomputation to the backward pass: it depends only on the saved
inputs, so XLA may schedule it as soon as the forward pass ends, and `jax.checkpoint`'s
`optimization_barrier` (which stops common-subexpression elimination) is removed by XLA before
scheduling. XLA:CPU does schedule it early: the memory analysis of a T5 train step showed the
recomputed attention of every encoder layer live at once, and the float32 copies of every
bfloat16 weight kept from the forward pass, which is why `remat_policy` saved almost nothing.

Here each rematerialised layer runs under a custom VJP whose backward first makes every floating
residual depend on the incoming cotangent (`residual + 0 * sum(cotangent)`, which XLA may not
fold: 0 * inf is nan): layer i's recomputation, weight casts included, cannot start before layer
i+1's backward has produced that cotangent, so about one layer's activations are live at a time.
The cost is one scalar reduction per layer and one pass over each layer's residuals.

Values, gradients, parameter names and dropout masks are those of the plain layer.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def call(layer: nn.Module, inputs: Sequence[Any], static: Sequence[Any] = ()) -> Any:
    """`layer(*inputs, *static)`, with its backward recomputation ordered after its cotangent.

    Args:
      layer: a bound, `nn.remat`-wrapped layer (its parameters keep their names).
      inputs: the array arguments (differentiable or not: masks, biases).
      static: trailing Python arguments (`enable_dropout`, `decode`, ...).

    Returns:
      The layer's output.
    """

    def apply(module: nn.Module, *args: Any) -> Any:
        return module(*args, *static)

    def forward(module: nn.Module, *args: Any) -> tuple[Any, Any]:
        return nn.vjp(apply, module, *args)

    def backward(vjp_fn: Any, cotangent: Any) -> Any:
        return tied_to(vjp_fn, cotangent)(cotangent)

    return nn.custom_vjp(apply, forward_fn=forward, backward_fn=backward)(layer, *inputs)


def tied_to(residuals: Any, cotangent: jax.Array) -> Any:
    """`residuals` with every floating leaf data-dependent on `cotangent`; values unchanged."""
    anchor = jnp.sum(cotangent, dtype=jnp.float32) * 0.0  # a scalar zero XLA must compute

    def tie(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf + anchor.astype(leaf.dtype)
        return leaf

    return jax.tree.map(tie, residuals)
