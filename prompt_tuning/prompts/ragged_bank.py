"""A serving prompt bank: up to C plain prompts of different lengths, one chosen per example.

Like `PromptBank`, example b uses row `task_ids[b]` of a table `[C, P, H]`, so one frozen model
serves many prompts in one forward pass. Here the rows hold prompts of any length p <= P,
*right-aligned*: row i is `[zeros[P - p_i, H]; prompt_i]` and `lengths[i] = p_i`. The module sets
`has_prompt_mask`, so the encoder masks the P - p_i leading positions of each example like padding
(docs/DESIGN.md, "Prompt hook"). Right-aligning keeps the distance between every prompt position
and every input position what it is when the prompt is served alone (T5's attention sees only
relative positions), so each example's output equals serving its prompt alone.

The table has a fixed capacity C (rows not in use are ignored), so adding a prompt only writes
new values into an array of the same shape and compiled programs stay valid.

Letters: C capacity (rows), P longest prompt, H model dim, B batch, T input length.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts.prompt import PROMPT_AXES, task_ids_or_default


def right_align(prompt: np.ndarray, length: int) -> np.ndarray:
    """Places a prompt `[p, H]` at the end of a zero row `[P, H]` (P = `length` >= p).

    Raises:
      ValueError: the prompt is longer than `length` or not 2-D.
    """
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[0] > length:
        raise ValueError(f"A prompt [p, H] with p <= {length} is needed; got {prompt.shape}.")
    row = np.zeros((length, prompt.shape[1]), prompt.dtype)  # [P, H]
    row[length - prompt.shape[0] :] = prompt
    return row


class RaggedPromptBank(nn.Module):
    """C prompt rows `prompt [C, P, H]` with their lengths `lengths [C]` (int32).

    Both are parameters under `encoder/prompt/` (a server writes them; nothing trains them). The
    axes are `("prompt_bank", "prompt", "prompt_embed")` and `("prompt_bank",)`: replicated, like
    every prompt axis.

    Attributes:
      capacity: C, the number of rows.
      length: P, the longest prompt a row can hold.
      embed_dim: H, the model dim.
      dtype: dtype of the returned prompts.
      param_dtype: dtype the table is stored in.
    """

    capacity: int
    length: int
    embed_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    has_prompt_mask = True

    def _params(self) -> tuple[jax.Array, jax.Array]:
        """The table `[C, P, H]` and the lengths `[C]`."""
        table = self.param(
            "prompt",
            nn.with_logical_partitioning(nn.initializers.zeros, ("prompt_bank", *PROMPT_AXES)),
            (self.capacity, self.length, self.embed_dim),
            self.param_dtype,
        )  # [C, P, H]
        lengths = self.param(
            "lengths",
            nn.with_logical_partitioning(nn.initializers.zeros, ("prompt_bank",)),
            (self.capacity,),
            jnp.int32,
        )  # [C]
        return table, lengths

    def _rows(self, task_ids: jax.Array | None, batch_size: int) -> jax.Array:
        """The row of every example `[B]`, clipped into `[0, C)` (indices in `jit` cannot raise)."""
        task_ids = task_ids_or_default(
            task_ids,
            batch_size,
            self.capacity,
            f"RaggedPromptBank holds {self.capacity} rows",
            "pass each example's row as `task_ids [B]`.",
        )
        return jnp.clip(jnp.asarray(task_ids, jnp.int32), 0, self.capacity - 1)

    @nn.compact
    def __call__(
        self,
        input_tokens: jax.Array,
        embedded_inputs: jax.Array,
        task_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Each example's right-aligned prompt.

        Args:
          input_tokens: `[B, T]` int token ids (unused; part of the prompt interface).
          embedded_inputs: `[B, T, H]` (gives B).
          task_ids: `[B]` int rows of the table.

        Returns:
          `[B, P, H]` prompts (zeros before each example's prompt; `prompt_mask` marks them).
        """
        del input_tokens
        table, _ = self._params()
        rows = self._rows(task_ids, embedded_inputs.shape[0])
        return jnp.take(table, rows, axis=0).astype(self.dtype)  # [B, P, H]

    def prompt_mask(self, task_ids: jax.Array | None) -> jax.Array:
        """`[B, P]` bool: True at the last `lengths[task_ids[b]]` positions of example b.

        Called by the encoder after `__call__` (which declares the parameters).
        """
        lengths = nn.unbox(self.get_variable("params", "lengths"))  # [C]
        rows = self._rows(task_ids, 1 if task_ids is None else task_ids.shape[0])
        start = self.length - jnp.take(lengths, rows)  # [B]
        return jnp.arange(self.length)[None, :] >= start[:, None]  # [B, P]
