"""Deep prompts (P-tuning v2, Liu et al., 2022): a learned prompt before every encoder layer.

Layer 0's prompt is prepended to the embedded inputs; before each layer i >= 1 the encoder replaces
the hidden states at the P prompt positions with layer i's prompt. Trainable parameters: L*P*H
(IDPG's Table 2 counts 5 * 24 * 1024 = 120K for RoBERTa-Large).

There is no `fold`: per-layer prompts have no plain-prompt equivalent.

Letters: B batch, T input length, P prompt length, H model dim, L encoder layers.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import PROMPT_AXES, expand_to_batch


class DeepPrompt(nn.Module):
    """One learned prompt per encoder layer, parameter `prompt` [L, P, H].

    Attributes:
      length: P.
      num_layers: L, the number of encoder layers; None inside `t5.EncoderDecoder` takes the
        model's `num_encoder_layers` (required when the module is applied on its own).
      prompt_init: initializer of one layer's prompt [P, H] (applied per layer, own rng).
      dtype: dtype of the returned prompts.
    """

    length: int
    num_layers: int | None = None
    prompt_init: Callable[..., jax.Array] = initializers.random_uniform(0.5)
    dtype: Any = jnp.float32

    per_layer = True

    def __call__(
        self, input_tokens: jax.Array, embedded_inputs: jax.Array, task_ids: jax.Array | None = None
    ) -> jax.Array:
        """Returns layer 0's prompt for each example.

        Args:
          input_tokens: [B, T] int token ids.
          embedded_inputs: [B, T, H] embedded inputs (only H is read).
          task_ids: unused.

        Returns:
          [B, P, H] prompt.
        """
        del task_ids
        return self._layer(0, input_tokens.shape[0], embedded_inputs.shape[-1])

    def layer_prompt(
        self,
        layer_index: int,
        input_tokens: jax.Array,
        hidden: jax.Array,
        task_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Returns the prompt inserted before encoder layer `layer_index` >= 1.

        Args:
          layer_index: i, 1 <= i < L.
          input_tokens: [B, T] int token ids.
          hidden: [B, P+T, H] input of layer i (only H is read).
          task_ids: unused.

        Returns:
          [B, P, H] prompt replacing hidden[:, :P].
        """
        del task_ids
        return self._layer(layer_index, input_tokens.shape[0], hidden.shape[-1])

    @nn.compact
    def _layer(self, layer_index: int, batch_size: int, width: int) -> jax.Array:
        """Layer `layer_index`'s prompt broadcast to the batch -> [B, P, H]."""
        if self.num_layers is None:
            raise ValueError(
                "DeepPrompt.num_layers is None: set it to the encoder's number of layers "
                "(NUM_ENCODER_LAYERS), or use the prompt inside t5.EncoderDecoder, which sets it."
            )
        if not 0 <= layer_index < self.num_layers:
            raise ValueError(
                f"Layer {layer_index} has no prompt: DeepPrompt has num_layers={self.num_layers}; "
                "set it to the encoder's number of layers (NUM_ENCODER_LAYERS)."
            )
        prompts = self.param(
            "prompt",
            nn.with_logical_partitioning(
                initializers.per_layer(self.prompt_init), ("prompt_layers", *PROMPT_AXES)
            ),
            (self.num_layers, self.length, width),
        )
        return expand_to_batch(prompts[layer_index].astype(self.dtype), batch_size)
