"""Decomposed prompt tuning (DePT, Shi & Lipani, ICLR 2024): a short prompt plus a low-rank update
of the input token embeddings.

The soft prompt of length m is prepended as in plain prompt tuning; the frozen embeddings of the
s input positions get a learned offset `alpha / sqrt(r) * A B` (A [s, r], B [r, H]), row i added
to the token at position i. Trainable parameters: m*H + s*r + r*H (76,800 for T5-Base at m = 60,
r = 30, s = 256: the count of a 100-token prompt). The paper's code (ZhengxiangShi/DePT,
`peft/tuners/prompt_tuning_lora.py`, `peft/peft_model.py`) initialises the prompt as PEFT's
`RANDOM` (torch `nn.Embedding`: N(0, 1)), A with torch's `kaiming_uniform_(a=sqrt(5))` (uniform in
+-1/sqrt(r)) and B with zeros (so training starts from plain prompt tuning), scales A B by
`lora_alpha / sqrt(r)` with `lora_alpha = 8`, and trains the pair with its own learning rate (an
AdamW parameter group: prompt 3e-1, pair 5e-3 .. 1e-4); here the second rate is a scale of the
optimizer's (`optimizers.adafactor(learning_rate_scales=...)`, `gin_configs/prompts/dept.gin`).

Inputs shorter than s (padding, bucketing) use the first T rows; the paper pads to s, so its rows
line up the same way. Padding positions keep their frozen embedding (they are masked anyway).

Letters: B batch, T input length, s DePT's input length, m prompt length, r rank, H model dim.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.prompts.prompt import PROMPT_AXES, expand_to_batch

LOW_RANK_REGEX = "prompt/low_rank_"  # the pair's parameters, for a learning-rate scale
POSITION_AXES = ("prompt_positions", "prompt_rank")  # A [s, r]
RANK_AXES = ("prompt_rank", "prompt_embed")  # B [r, H]


def kaiming_uniform_rows(rng: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
    """Uniform in +-1/sqrt(shape[-1]): torch's `kaiming_uniform_(a=sqrt(5))` on a [s, r] tensor
    (torch's fan-in is the last axis, r)."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(rng, shape, dtype, minval=-bound, maxval=bound)


def input_length(feature_lengths: Mapping[str, int]) -> int:
    """s: the `inputs` length of TASK_FEATURE_LENGTHS (gin: `prompts.dept_input_length`).

    Raises:
      ValueError: `feature_lengths` has no positive `inputs` entry.
    """
    value = dict(feature_lengths).get("inputs")
    if not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"DePT's input length s comes from TASK_FEATURE_LENGTHS['inputs'], but "
            f"TASK_FEATURE_LENGTHS is {dict(feature_lengths)!r}; set it, e.g. "
            "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 256, 'targets': 16}\"."
        )
    return value


def parameter_count(length: int, rank: int, max_length: int, width: int) -> int:
    """m*H + s*r + r*H: DePT's trainable parameters."""
    return length * width + max_length * rank + rank * width


class DecomposedInputPrompt(nn.Module):
    """DePT: prompt `prompt` [m, H] plus the input update `low_rank_a` [s, r] @ `low_rank_b` [r, H].

    Sets `updates_inputs = True` (docs/DESIGN.md, "Prompt hook"): `__call__` returns the prompt
    and the updated input embeddings, which the encoder uses in place of the frozen ones.

    Attributes:
      length: m, the prompt length (PROMPT_LENGTH).
      rank: r (DEPT_RANK).
      max_length: s, the encoder input length (TASK_FEATURE_LENGTHS['inputs']).
      alpha: the update is scaled by alpha / sqrt(r) (the paper's code: lora_alpha = 8).
      prompt_init: initializer of the prompt [m, H] (the paper's code: N(0, 1)).
      a_init: initializer of A [s, r].
      b_init: initializer of B [r, H] (zeros: training starts as plain prompt tuning).
      dtype: dtype of the prompt and of the update.
    """

    length: int
    rank: int
    max_length: int
    alpha: float = 8.0
    prompt_init: Callable[..., jax.Array] = nn.initializers.normal(1.0)
    a_init: Callable[..., jax.Array] = kaiming_uniform_rows
    b_init: Callable[..., jax.Array] = nn.initializers.zeros
    dtype: Any = jnp.float32

    updates_inputs = True

    @nn.compact
    def __call__(
        self, input_tokens: jax.Array, embedded_inputs: jax.Array, task_ids: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """The prompt and the input embeddings with the low-rank update added.

        Args:
          input_tokens: [B, T] int token ids (0 = padding).
          embedded_inputs: [B, T, H] frozen embeddings of the input tokens.
          task_ids: unused.

        Returns:
          (prompt [B, m, H], updated inputs [B, T, H]).

        Raises:
          ValueError: T > s, or a non-positive length or rank.
        """
        del task_ids
        if self.length <= 0 or self.rank <= 0:
            raise ValueError(
                f"DePT needs PROMPT_LENGTH > 0 and DEPT_RANK > 0; got {self.length}, {self.rank}."
            )
        b, t, width = embedded_inputs.shape
        if t > self.max_length:
            raise ValueError(
                f"DePT's input update has s={self.max_length} rows but the inputs have T={t} "
                "tokens; set TASK_FEATURE_LENGTHS['inputs'] to at least the longest input "
                f"(it gives s), or cut the inputs to {self.max_length}."
            )
        prompt = self.param(
            "prompt", nn.with_logical_partitioning(self.prompt_init, PROMPT_AXES),
            (self.length, width),
        )  # fmt: skip
        a = self.param(
            "low_rank_a", nn.with_logical_partitioning(self.a_init, POSITION_AXES),
            (self.max_length, self.rank),
        )  # fmt: skip
        b_matrix = self.param(
            "low_rank_b", nn.with_logical_partitioning(self.b_init, RANK_AXES), (self.rank, width)
        )
        scale = self.alpha / math.sqrt(self.rank)
        update = scale * (a[:t] @ b_matrix)  # [T, H]
        real = (input_tokens > 0)[..., None]  # [B, T, 1]
        updated = embedded_inputs + jnp.where(real, update[None], 0).astype(embedded_inputs.dtype)
        return expand_to_batch(prompt.astype(self.dtype), b), updated
