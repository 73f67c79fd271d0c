"""Parameterized hypercomplex multiplication (PHM) weights (Zhang et al., 2021), as used by IDPG.

A PHM layer's weight is a sum of n Kronecker products (IDPG equation 4):
    W = sum_i A_i (x) B_i,   A_i [n, n] ("rules"),  B_i [I/n, O/n] ("factors"),
so a [I, O] kernel costs n^3 + I*O/n parameters instead of I*O. We store kernels input-first
(`y = x @ W + b`), the transpose of the paper's `y = W x + b`; the count is the same.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PHM_RULE_AXES = ("prompt_phm", "prompt_phm_rows", "prompt_phm_cols")


def rule_init(rng: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """N(0, 1/n) rules [n, n, n], so W = sum_i A_i (x) B_i keeps the variance of one B_i."""
    return jax.random.normal(rng, shape, dtype) / jnp.sqrt(jnp.asarray(shape[0], dtype))


def phm_kernel(rules: jax.Array, factors: jax.Array) -> jax.Array:
    """Builds W = sum_i kron(rules[i], factors[i]).

    Args:
      rules: [n, n, n] the matrices A_i.
      factors: [n, I/n, O/n] the matrices B_i.

    Returns:
      [I, O] kernel.
    """
    n, rows, cols = factors.shape
    kernel = jnp.einsum("kab,kcd->acbd", rules, factors)  # [n, I/n, n, O/n]
    return kernel.reshape(n * rows, n * cols)  # [I, O]


def check_divides(n: int, **dims: int) -> None:
    """Raises a ValueError naming every dimension `n` does not divide.

    Args:
      n: the PHM hyperparameter.
      **dims: named dimensions, e.g. input=1024, hidden=16.

    Raises:
      ValueError: some dimension is not a multiple of n.
    """
    bad = {name: dim for name, dim in dims.items() if dim % n}
    if n < 1 or bad:
        raise ValueError(
            f"PHM rank n={n} must divide every layer dimension, but it does not divide {bad}; "
            "choose phm_rank among the common divisors."
        )


class PHMDense(nn.Module):
    """A dense layer `y = x @ W + b` whose kernel W [I, O] is a PHM sum of Kronecker products.

    Parameters: `factors` [n, I/n, O/n], `bias` [O] (when `use_bias`), and `rules` [n, n, n]
    unless the rules are passed in (single-layer IDPG shares one set between its two layers).

    Attributes:
      features: O.
      n: number of Kronecker terms and size of each A_i.
      use_bias: add a learned bias [O].
      factor_axes: logical axis names of one factor [I/n, O/n].
      rule_init: initializer of the rules.
      factor_init: initializer of the factors.
    """

    features: int
    n: int
    use_bias: bool = True
    factor_axes: tuple[str, str] = ("prompt_phm_in", "prompt_phm_out")
    rule_init: Callable[..., jax.Array] = rule_init
    factor_init: Callable[..., jax.Array] = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1)

    @nn.compact
    def __call__(self, inputs: jax.Array, rules: jax.Array | None = None) -> jax.Array:
        """Applies the layer.

        Args:
          inputs: [..., I].
          rules: optional shared rules [n, n, n]; when None the layer owns its `rules`.

        Returns:
          [..., O].
        """
        fan_in = inputs.shape[-1]
        check_divides(self.n, input=fan_in, output=self.features)
        if rules is None:
            rules = self.param(
                "rules",
                nn.with_logical_partitioning(self.rule_init, PHM_RULE_AXES),
                (self.n, self.n, self.n),
            )
        factors = self.param(
            "factors",
            nn.with_logical_partitioning(self.factor_init, ("prompt_phm", *self.factor_axes)),
            (self.n, fan_in // self.n, self.features // self.n),
        )
        outputs = inputs @ phm_kernel(rules, factors)  # [..., O]
        if self.use_bias:
            outputs += self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, (self.factor_axes[1],)),
                (self.features,),
            )
        return outputs


def rules_param(module: nn.Module, name: str, n: int, init: Any) -> jax.Array:
    """Declares a rules parameter [n, n, n] on `module` (for rules shared between layers)."""
    return module.param(name, nn.with_logical_partitioning(init, PHM_RULE_AXES), (n, n, n))
