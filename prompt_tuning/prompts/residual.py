"""Residual prompt tuning (Razdaibiedina et al., 2023), the baseline of DPT's Table 1.

Each prompt row p [H] passes through a bottleneck MLP and a LayerNorm, plus a skip connection:
    p' = LayerNorm(W_up ReLU(W_down p + b_down) + b_up) + p
Trainable parameters: P*H + (H*b + b) + (b*H + H) + 2*H (925,072 for T5-Large, P = 100,
b = 400). After training the reparameterization folds into a plain prompt (`fold`).

Letters: B batch, T input length, P prompt length, H model dim, b bottleneck.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import PROMPT_AXES, expand_to_batch


class ResidualPrompt(nn.Module):
    """A prompt `prompt` [P, H] reparameterized by a residual bottleneck MLP.

    Parameters: `prompt` [P, H]; `down/kernel` [H, b], `down/bias` [b]; `up/kernel` [b, H],
    `up/bias` [H]; `layer_norm/scale` [H], `layer_norm/bias` [H].

    Attributes:
      length: P.
      bottleneck: b (400 in DPT's reproduction).
      prompt_init: initializer of the underlying prompt [P, H].
      layer_norm_epsilon: LayerNorm epsilon (PyTorch's default, as in the original code base).
      dtype: dtype of the returned prompt.
    """

    length: int
    bottleneck: int = 400
    prompt_init: Callable[..., jax.Array] = initializers.random_uniform(0.5)
    layer_norm_epsilon: float = 1e-5
    dtype: Any = jnp.float32

    def __call__(
        self, input_tokens: jax.Array, embedded_inputs: jax.Array, task_ids: jax.Array | None = None
    ) -> jax.Array:
        """Returns the reparameterized prompt for each example.

        Args:
          input_tokens: [B, T] int token ids.
          embedded_inputs: [B, T, H] embedded inputs (only H is read).
          task_ids: unused.

        Returns:
          [B, P, H] prompt.
        """
        del task_ids
        prompt = self.reparameterize(embedded_inputs.shape[-1])
        return expand_to_batch(prompt.astype(self.dtype), input_tokens.shape[0])

    @nn.compact
    def reparameterize(self, width: int) -> jax.Array:
        """Returns LayerNorm(MLP(prompt)) + prompt [P, H] for model dim `width` (H)."""
        prompt = self.param(
            "prompt",
            nn.with_logical_partitioning(self.prompt_init, PROMPT_AXES),
            (self.length, width),
        )
        hidden = nn.Dense(
            self.bottleneck,
            kernel_init=_kernel_init(("prompt_embed", "prompt_bottleneck")),
            bias_init=_zeros(("prompt_bottleneck",)),
            name="down",
        )(prompt)  # [P, b]
        hidden = nn.Dense(
            width,
            kernel_init=_kernel_init(("prompt_bottleneck", "prompt_embed")),
            bias_init=_zeros(("prompt_embed",)),
            name="up",
        )(nn.relu(hidden))  # [P, H]
        hidden = nn.LayerNorm(
            epsilon=self.layer_norm_epsilon,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("prompt_embed",)),
            bias_init=_zeros(("prompt_embed",)),
            name="layer_norm",
        )(hidden)
        return hidden + prompt  # [P, H]

    def fold(self, variables: Any, width: int | None = None) -> np.ndarray:
        """Returns the equivalent plain prompt [P, H] from this module's variables."""
        width = nn.unbox(variables)["params"]["prompt"].shape[-1]  # what `width` would say
        return np.asarray(self.apply(variables, width, method=self.reparameterize))


def _kernel_init(axes: tuple[str, str]) -> Callable[..., Any]:
    """LeCun-normal kernel initializer carrying logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def _zeros(axes: tuple[str, ...]) -> Callable[..., Any]:
    """Zero initializer carrying logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.zeros, axes)
