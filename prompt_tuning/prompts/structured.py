"""Structured prompt tuning (Liu et al., 2022): a hypernetwork maps a task embedding to the prompt.

R = H(e_t), with e_t [k] a learned task embedding and H shared by all tasks (equations 2-4):
- "linear":   M(W e + b),               W [P*H, k]
- "low_rank": M(C F e + b),             C [P*H, r], F [r, k]
- "mlp":      M(W2 gelu(W1 e + b1) + b2), W1 [h, k], W2 [P*H, h]
M reshapes a vector [P*H] to [P, H]. Kernels are stored input-first and already reshaped, e.g.
W as [k, P, H], so `M(W e)` is one contraction. With k = 1 and a linear hypernetwork this is plain
prompt tuning (the paper's remark in section 3.1).

Letters: B batch, T input length, P prompt length, H model dim, k task-embedding dim, r rank,
h hidden size.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import PROMPT_AXES, select_by_task

HYPERNETWORKS = ("linear", "low_rank", "mlp")
TASK_AXES = ("prompt_tasks", "prompt_task_dim")


class StructuredPrompt(nn.Module):
    """Prompt generated from a per-task embedding by a shared hypernetwork.

    Parameters: `task_embedding` [num_tasks, k] and, by hypernetwork,
    linear `kernel` [k, P, H], `bias` [P, H]; low_rank `kernel_f` [k, r], `kernel_c` [r, P, H],
    `bias` [P, H]; mlp `hidden_kernel` [k, h], `hidden_bias` [h], `kernel` [h, P, H], `bias` [P, H].
    The paper draws every weight from a normal distribution (std unstated): task embeddings
    N(0, 1), kernels N(0, 1/fan_in), biases zero, so prompt entries start near unit scale.

    Attributes:
      length: P.
      num_tasks: rows of the task-embedding table (1 for single-task training).
      task_dim: k (the paper uses 64).
      hypernetwork: "linear", "low_rank" or "mlp".
      rank: r of the low-rank hypernetwork (not given in the paper).
      hidden_dim: h of the MLP hypernetwork (not given in the paper).
      embedding_init: initializer of the task embeddings.
      kernel_init: initializer of the kernels (input axis first).
      dtype: dtype of the returned prompt.
    """

    length: int
    num_tasks: int = 1
    task_dim: int = 64
    hypernetwork: str = "linear"
    rank: int = 8
    hidden_dim: int = 128
    embedding_init: Callable[..., jax.Array] = nn.initializers.normal(1.0)
    kernel_init: Callable[..., jax.Array] = initializers.normal_fan_in
    dtype: Any = jnp.float32

    @property
    def num_task_ids(self) -> int:
        """Task ids this prompt has rows for: `task_ids` must lie in [0, num_tasks)."""
        return self.num_tasks

    @nn.compact
    def __call__(
        self, input_tokens: jax.Array, embedded_inputs: jax.Array, task_ids: jax.Array | None = None
    ) -> jax.Array:
        """Generates each example's prompt from its task's embedding.

        Args:
          input_tokens: [B, T] int token ids.
          embedded_inputs: [B, T, H] embedded inputs (only H is read).
          task_ids: [B] task index of each example in [0, num_tasks), checked on the host before
            a batch enters a jitted step (`PromptModel.check_task_ids`); None means task 0.

        Returns:
          [B, P, H] prompt.

        Raises:
          ValueError: unknown hypernetwork.
        """
        if self.hypernetwork not in HYPERNETWORKS:
            raise ValueError(
                f"Unknown hypernetwork {self.hypernetwork!r}; choose one of {HYPERNETWORKS}."
            )
        batch_size, width = input_tokens.shape[0], embedded_inputs.shape[-1]
        if task_ids is None:
            task_ids = jnp.zeros((batch_size,), jnp.int32)
        table = self.param(
            "task_embedding",
            nn.with_logical_partitioning(self.embedding_init, TASK_AXES),
            (self.num_tasks, self.task_dim),
        )
        task_embedding = select_by_task(table, task_ids)  # [B, k]
        return self._generate(task_embedding, width).astype(self.dtype)

    def _generate(self, task_embedding: jax.Array, width: int) -> jax.Array:
        """Applies the hypernetwork: [B, k] -> [B, P, H]."""
        out_shape = (self.length, width)
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, PROMPT_AXES), out_shape
        )
        if self.hypernetwork == "linear":
            kernel = self._kernel("kernel", "prompt_task_dim", self.task_dim, out_shape)
            features = task_embedding
        elif self.hypernetwork == "low_rank":
            factor = self.param(
                "kernel_f",
                nn.with_logical_partitioning(self.kernel_init, ("prompt_task_dim", "prompt_rank")),
                (self.task_dim, self.rank),
            )
            kernel = self._kernel("kernel_c", "prompt_rank", self.rank, out_shape)
            features = task_embedding @ factor  # [B, r]
        else:
            hidden_kernel = self.param(
                "hidden_kernel",
                nn.with_logical_partitioning(
                    self.kernel_init, ("prompt_task_dim", "prompt_hidden")
                ),
                (self.task_dim, self.hidden_dim),
            )
            hidden_bias = self.param(
                "hidden_bias",
                nn.with_logical_partitioning(nn.initializers.zeros, ("prompt_hidden",)),
                (self.hidden_dim,),
            )
            kernel = self._kernel("kernel", "prompt_hidden", self.hidden_dim, out_shape)
            features = nn.gelu(task_embedding @ hidden_kernel + hidden_bias)  # [B, h]
        return jnp.einsum("bi,iph->bph", features, kernel) + bias  # [B, P, H]

    def _kernel(self, name: str, in_axis: str, fan_in: int, out_shape: tuple[int, int]):
        """Declares an output kernel [fan_in, P, H]."""
        return self.param(
            name,
            nn.with_logical_partitioning(self.kernel_init, (in_axis, *PROMPT_AXES)),
            (fan_in, *out_shape),
        )

    def fold(
        self, variables: Any, width: int | None = None, task_id: int | None = None
    ) -> np.ndarray:
        """The generated prompts from this module's variables.

        Args:
          variables: `{"params": ...}` of this module.
          width: unused (the bias holds H).
          task_id: one task's prompt; None gives every task's.

        Returns:
          `[P, H]` for one task (or when `num_tasks` is 1), else `[num_tasks, P, H]`, row t the
          prompt of task id t.
        """
        del width
        width = nn.unbox(variables)["params"]["bias"].shape[-1]
        ids = np.arange(self.num_tasks) if task_id is None else np.array([task_id])
        tokens = jnp.ones((len(ids), 1), jnp.int32)
        embedded = jnp.zeros((len(ids), 1, width))
        prompts = np.asarray(self.apply(variables, tokens, embedded, jnp.asarray(ids, jnp.int32)))
        return prompts[0] if len(ids) == 1 else prompts  # [P, H] or [N, P, H]
