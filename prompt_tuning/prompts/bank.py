"""A bank of N plain prompts, one chosen per example by `task_ids`.

One frozen model then serves many prompts in one forward pass: a multi-task batch where each
example uses its task's prompt, or a prompt ensemble where copy i of a replicated batch uses prompt
i (Lester et al., 2021, section 6). The parameter lives at `encoder/prompt/prompt` like the plain
Lester prompt, with one extra leading axis: `[N, P, H]`.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import PROMPT_AXES, select_by_task, task_ids_or_default

# Letters: N prompts in the bank, P prompt length, H model dim, B batch, T input length.
Initializer = Callable[..., jax.Array]


class PromptBank(nn.Module):
    """N plain prompts `[N, P, H]`; example b uses prompt `task_ids[b]`.

    The axes are `("prompt_bank", "prompt", "prompt_embed")`: prompts are tiny, so they are
    replicated on every device (`prompt_bank` has no partitioning rule, so it is replicated too).

    Attributes:
      num_prompts: N, the number of prompts (tasks or ensemble members).
      length: P, the prompt length.
      embed_dim: H; None takes it from `embedded_inputs` at initialisation.
      prompt_init: initializer of the `[N, P, H]` table; None draws uniformly from [-0.5, 0.5]
        (`initializers.random_uniform(0.5)`, the original prompt tuning code's random init).
      dtype: dtype of the returned prompts.
      param_dtype: dtype the table is stored in.
    """

    num_prompts: int
    length: int
    embed_dim: int | None = None
    prompt_init: Initializer | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def num_task_ids(self) -> int:
        """Task ids this bank has prompts for: `task_ids` must lie in [0, num_prompts)."""
        return self.num_prompts

    @nn.compact
    def __call__(
        self,
        input_tokens: jax.Array,
        embedded_inputs: jax.Array,
        task_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Selects each example's prompt.

        Args:
          input_tokens: `[B, T]` int token ids (unused; part of the prompt interface).
          embedded_inputs: `[B, T, H]` embedded inputs (gives B and H).
          task_ids: `[B]` int ids in `[0, N)`, checked on the host before a batch enters a
            jitted step (`PromptModel.check_task_ids`); may be None only when N == 1.

        Returns:
          `[B, P, H]` prompts.

        Raises:
          ValueError: `task_ids` is None but the bank holds more than one prompt.
        """
        del input_tokens
        batch_size, _, embed = embedded_inputs.shape
        h = self.embed_dim or embed

        init = self.prompt_init or initializers.random_uniform(0.5)
        prompts = self.param(
            "prompt",
            nn.with_logical_partitioning(init, ("prompt_bank", *PROMPT_AXES)),
            (self.num_prompts, self.length, h),
            self.param_dtype,
        )  # [N, P, H]
        task_ids = task_ids_or_default(
            task_ids,
            batch_size,
            self.num_prompts,
            f"PromptBank holds {self.num_prompts} prompts",
            "pass `task_ids [B]` (a mixture's task ids, or ensemble copy ids).",
        )
        return select_by_task(prompts, task_ids).astype(self.dtype)  # [B, P, H]

    @staticmethod
    def fold(variables: Any, width: int | None = None) -> np.ndarray:
        """Returns the prompt table `[N, P, H]` from `{"params": {"prompt": ...}}` (no width)."""
        del width
        return np.asarray(nn.unbox(variables)["params"]["prompt"])
