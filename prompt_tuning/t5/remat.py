"""Rematerialisation that stays in the backward pass: `call(layer, *inputs)`.

`nn.remat` (`jax.checkpoint`) saves only a layer's inputs and recomputes the rest in the backward
pass, but nothing ties that recomputation to the backward pass: it depends only on the saved
inputs, so XLA may schedule it as soon as the forward pass ends. XLA:CPU does (its memory
analysis of a T5 train step shows the recomputed attention of every encoder layer live at once),
which is why `remat_policy` saved almost nothing. Here each rematerialised layer runs under a
custom VJP whose backward first passes the saved residuals and the incoming cotangent through one
`optimization_barrier`: layer i's recomputation cannot start before layer i+1's backward produced
that cotangent, so at most one layer's activations are live, on every backend.

Values, gradients, parameter names and dropout masks are those of the plain layer.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax


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
        vjp_fn, cotangent = jax.lax.optimization_barrier((vjp_fn, cotangent))
        return vjp_fn(cotangent)

    return nn.custom_vjp(apply, forward_fn=forward, backward_fn=backward)(layer, *inputs)
