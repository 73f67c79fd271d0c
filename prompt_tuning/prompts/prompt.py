"""Plain prompt tuning (Lester et al., 2021): one learned matrix [P, H] prepended to every input.

Letters: B batch, T input length, P prompt length, H model dim.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import initializers

# Prompt rows and their width; the trainer's rules replicate both (a prompt is tiny).
PROMPT_AXES = ("prompt", "prompt_embed")


def expand_to_batch(prompt: jax.Array, batch_size: int) -> jax.Array:
    """Repeats one prompt [P, H] for every example -> [B, P, H]."""
    return jnp.broadcast_to(prompt[None], (batch_size, *prompt.shape))  # [B, P, H]


def masked_mean(values: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean of `values` [B, T, D] over real positions (`tokens` [B, T] > 0) -> [B, D].

    An all-padding row gives zeros.
    """
    mask = (tokens > 0).astype(values.dtype)[..., None]  # [B, T, 1]
    count = jnp.maximum(mask.sum(axis=1), 1.0)  # [B, 1]
    return (values * mask).sum(axis=1) / count  # [B, D]


def check_task_ids(task_ids: Any, num_task_ids: int, where: str = "the batch") -> None:
    """Raises when a task id is outside `[0, num_task_ids)`.

    Args:
      task_ids: `[B]` ints (host numpy, or a concrete array).
      num_task_ids: how many task ids the prompt has rows for.
      where: what the ids belong to, for the message (e.g. "task 'taskless_glue_rte_v002'").

    Raises:
      ValueError: naming the first bad id, `where`, and the valid range.
    """
    ids = np.asarray(task_ids).reshape(-1)
    bad = ids[(ids < 0) | (ids >= num_task_ids)]
    if bad.size:
        raise ValueError(
            f"Task id {int(bad[0])} of {where} is outside the prompt's {num_task_ids} task ids "
            f"(0..{num_task_ids - 1}): the mixture has more tasks than the prompt has rows. Set "
            "NUM_TASKS (structured prompts, PromptBank) to the mixture's number of tasks."
        )


def select_by_task(table: jax.Array, task_ids: jax.Array) -> jax.Array:
    """Row `task_ids[b]` of `table` `[N, ...]` for every example -> `[B, ...]`.

    An index inside `jit` cannot raise, so ids are checked where batches are built, on the host
    (`PromptModel.check_task_ids`; concrete ids are also checked here). An unchecked out-of-range
    id inside `jit` gives an unspecified row.
    """
    if not isinstance(task_ids, jax.core.Tracer):
        check_task_ids(task_ids, table.shape[0])
    ids = jnp.asarray(task_ids, jnp.int32)
    return jnp.asarray(table).at[ids].get(mode="promise_in_bounds")  # [B, ...]


def task_ids_or_default(
    task_ids: jax.Array | None, batch_size: int, num_rows: int, owner: str, fix: str
) -> jax.Array:
    """`task_ids [B]`, or row 0 for every example when a table of one row gets no ids.

    Args:
      task_ids: `[B]` int ids, or None when the batch has none.
      batch_size: B.
      num_rows: N, the rows of the table the ids index.
      owner: what holds the table, for the error (e.g. "PromptBank holds 3 prompts").
      fix: what to do instead, for the error.

    Raises:
      ValueError: `task_ids` is None and N > 1 (which row would be a guess).
    """
    if task_ids is not None:
        return task_ids
    if num_rows != 1:
        raise ValueError(f"{owner} but the batch has no `task_ids`; {fix}")
    return jnp.zeros((batch_size,), jnp.int32)


class Prompt(nn.Module):
    """A learned prompt `prompt` [P, H] shared by all examples (path `encoder/prompt/prompt`).

    Attributes:
      length: P, the number of prompt positions.
      prompt_init: initializer `init(rng, [P, H], dtype)`; see `prompts.initializers` (Lester et al.
        default to class-label initialization). Named `prompt_init` (as in the original T5X
        prompt tuning) because a field called `init` would shadow `flax.linen.Module.init`.
      dtype: dtype of the returned prompt.
      param_dtype: dtype the parameter is stored in.
    """

    length: int
    prompt_init: Callable[..., jax.Array] = initializers.random_uniform(0.5)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, input_tokens: jax.Array, embedded_inputs: jax.Array, task_ids: jax.Array | None = None
    ) -> jax.Array:
        """Returns the prompt for each example.

        Args:
          input_tokens: [B, T] int token ids (0 is padding).
          embedded_inputs: [B, T, H] embedded inputs (only B and H are read).
          task_ids: [B] ints or None; unused.

        Returns:
          [B, P, H] prompt.
        """
        del task_ids
        width = embedded_inputs.shape[-1]
        prompt = self.param(
            "prompt",
            nn.with_logical_partitioning(self.prompt_init, PROMPT_AXES),
            (self.length, width),
            self.param_dtype,
        )
        return expand_to_batch(jnp.asarray(prompt, self.dtype), input_tokens.shape[0])

    def fold(self, variables: Any, width: int | None = None) -> np.ndarray:
        """Returns the prompt [P, H] from this module's variables `{"params": {"prompt": ...}}`."""
        del width  # the prompt holds it
        return np.asarray(nn.unbox(variables)["params"]["prompt"])
