"""Multitask prompt tuning (MPT; Wang et al., ICLR 2023): shared prompt ∘ rank-one task matrix.

Task k's prompt is the Hadamard product of a prompt `P*` shared by all tasks with a rank-one
matrix of the task's own vectors:

    P_k = P* ∘ (u_k v_kᵀ)        P* [P, H], u_k [P], v_k [H]   ->   P_k [P, H]

so entry (i, j) is `P*[i, j] * u_k[i] * v_k[j]`. The source stage trains `P*` and every task's
`(u_k, v_k)` on a multi-task mixture (with distillation from single-task teacher prompts:
`train.distillation`); target adaptation starts a one-task `MultitaskPrompt` from the source run's
`P*` and trains `P*`, `u` and `v`: `P*H + P + H` parameters per target task (77,668 at P = 100,
H = 768, T5-Base).

Letters: N tasks, P prompt length, H model dim, B batch, T input length.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import PROMPT_AXES, select_by_task, task_ids_or_default

Initializer = Callable[..., jax.Array]

SHARED = "shared"  # encoder/prompt/shared [P, H]: P*
TASK_ROWS = "u"  # encoder/prompt/u [N, P]
TASK_COLS = "v"  # encoder/prompt/v [N, H]


def compose(shared: Any, u: Any, v: Any) -> Any:
    """`P* ∘ (u vᵀ)` for one task (`u [P]`, `v [H]`) or a batch of tasks (`u [B, P]`, `v [B, H]`).

    Args:
      shared: `[P, H]` shared prompt P*.
      u: `[..., P]` task row factors.
      v: `[..., H]` task column factors.

    Returns:
      `[..., P, H]` prompts (numpy in, numpy out; jax in, jax out).
    """
    return shared * u[..., :, None] * v[..., None, :]  # [..., P, H]


class MultitaskPrompt(nn.Module):
    """MPT's prompt: `P_k = P* ∘ (u_k v_kᵀ)`, example b uses task `task_ids[b]`.

    Parameters (under `encoder/prompt/`): `shared` [P, H] with axes `("prompt", "prompt_embed")`,
    `u` [N, P] with `("prompt_tasks", "prompt")`, `v` [N, H] with `("prompt_tasks",
    "prompt_embed")`; all tiny and replicated (every `prompt*` axis maps to no mesh axis).

    Attributes:
      length: P, the prompt length.
      num_tasks: N, the rank-one pairs (source tasks; 1 for target adaptation).
      embed_dim: H; None takes it from `embedded_inputs` at initialisation.
      shared_init: initializer of P* `[P, H]`; None draws uniformly from [-0.5, 0.5] (the
        original prompt tuning code's random init). Target adaptation reads the source run's P*
        (`gin_configs/prompts/mpt.gin`: `initializers.from_checkpoint` of
        "encoder/prompt/shared").
      task_init: initializer of `u` [N, P] and `v` [N, H]; None sets them to ones, so every task
        starts at `P_k = P*` (target adaptation starts exactly from the shared prompt).
      dtype: dtype of the returned prompts.
      param_dtype: dtype the parameters are stored in.
    """

    length: int
    num_tasks: int = 1
    embed_dim: int | None = None
    shared_init: Initializer | None = None
    task_init: Initializer | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def num_task_ids(self) -> int:
        """Task ids this prompt has rank-one pairs for: `task_ids` must lie in [0, num_tasks)."""
        return self.num_tasks

    @nn.compact
    def __call__(
        self,
        input_tokens: jax.Array,
        embedded_inputs: jax.Array,
        task_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Each example's task prompt.

        Args:
          input_tokens: `[B, T]` int token ids (unused; part of the prompt interface).
          embedded_inputs: `[B, T, H]` embedded inputs (gives B and H).
          task_ids: `[B]` int ids in `[0, N)`, checked on the host before a batch enters a
            jitted step (`PromptModel.check_task_ids`); may be None only when N == 1.

        Returns:
          `[B, P, H]` prompts.

        Raises:
          ValueError: `task_ids` is None but the prompt has more than one task.
        """
        del input_tokens
        batch_size, _, embed = embedded_inputs.shape
        h = self.embed_dim or embed
        shared_init = self.shared_init or initializers.random_uniform(0.5)
        task_init = self.task_init or nn.initializers.ones
        shared = self.param(
            SHARED, nn.with_logical_partitioning(shared_init, PROMPT_AXES),
            (self.length, h), self.param_dtype,
        )  # [P, H]  # fmt: skip
        u = self.param(
            TASK_ROWS, nn.with_logical_partitioning(task_init, ("prompt_tasks", "prompt")),
            (self.num_tasks, self.length), self.param_dtype,
        )  # [N, P]  # fmt: skip
        v = self.param(
            TASK_COLS, nn.with_logical_partitioning(task_init, ("prompt_tasks", "prompt_embed")),
            (self.num_tasks, h), self.param_dtype,
        )  # [N, H]  # fmt: skip
        task_ids = task_ids_or_default(
            task_ids,
            batch_size,
            self.num_tasks,
            f"MultitaskPrompt has {self.num_tasks} tasks",
            "train it on a mixture with task ids (e.g. 'builtin_equal_with_task_ids'), or "
            "set NUM_TASKS = 1 for target adaptation.",
        )
        u_b = select_by_task(u, task_ids)  # [B, P]
        v_b = select_by_task(v, task_ids)  # [B, H]
        return compose(shared, u_b, v_b).astype(self.dtype)  # [B, P, H]

    def fold(self, variables: Any, width: int | None = None) -> np.ndarray:
        """The plain prompts `P_k`: `[P, H]` when N == 1, else `[N, P, H]` (row k = task id k).

        Args:
          variables: `{"params": {"shared": [P, H], "u": [N, P], "v": [N, H]}}`.
          width: unused (the variables hold H).

        Returns:
          `[P, H]` or `[N, P, H]` float32.
        """
        del width
        params = nn.unbox(variables)["params"]
        shared, u, v = (np.asarray(params[k], np.float32) for k in (SHARED, TASK_ROWS, TASK_COLS))
        prompts = compose(shared, u, v)  # [N, P, H]
        return prompts[0] if prompts.shape[0] == 1 else prompts


def num_parameters(length: int, embed_dim: int, num_tasks: int = 1) -> int:
    """MPT's parameter count: `P*H + N*(P + H)` (P* plus N rank-one pairs)."""
    return length * embed_dim + num_tasks * (length + embed_dim)
