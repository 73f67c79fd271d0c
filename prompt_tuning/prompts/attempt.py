"""ATTEMPT: an instance-wise attentional mixture of frozen source prompts (Asai et al., 2022).

k source prompts P_1..P_k [P, H], trained earlier (plain prompt tuning on source tasks), are kept
frozen. A new target prompt P_t [P, H] and a small attention network G are trained. For input x
with embedded tokens X [T, H] (section 3.2, and the authors' code, `attn_method="sub"`):

    x_hat  = max over real tokens of X                             [H]   (max-pooling)
    h      = LayerNorm(W_up . SiLU(W_down . x_hat))                [H]   W_down [H, r], W_up [r, H]
    s_j    = max over the P rows of P_j                            [H]   j = 1..k+1, P_{k+1} = P_t
    a      = softmax_j(s_j . h / T)                                [k+1] T = H * e by default
    prompt = P_t + sum_j a_j P_j                                   [P, H]

(the code's temperature 2087 for T5-base is 768 * e). Only P_t and G (W_down, W_up and the layer
norm's scale and bias) are parameters: per target task P*H + 2*H*r + 2*H, 231,936 ~ 232K at
T5-base (H = 768, P = 100, r = 100), as the paper reports. Multi-task training (`num_tasks` N > 1)
shares G and keeps one target prompt per task, picked by `task_ids`.

The source prompts are not variables at all: `sources` is a loader returning the array, read at
trace time and closed over as a constant, so they get no gradient, no optimizer state and no
checkpoint entry whatever TRAINABLE_PARAMS_REGEX says (a run's export holds only P_t and G; load it
with the same SOURCE_PROMPTS). gin binds the loader to `prompt_files.source_prompts_loader()`,
which reads SOURCE_PROMPTS (prompt files, run folders, PEFT adapters) once.

Two choices differ from the authors' code and are deliberate: the input max-pool skips padding
(their batches are padded to a fixed length, so padding embeddings enter the max), and the target
prompt's default initialization copies the first source prompt, as their single-task training does
(`prompt_init` replaces it, e.g. by `sampled_vocab`).

Letters: B batch, T input length, P prompt length, H model dim, k source prompts, r attention rank,
N target tasks.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts.prompt import PROMPT_AXES, select_by_task, task_ids_or_default

Initializer = Callable[..., jax.Array]
SourceLoader = Callable[[], Any]
TASK_AXES = ("prompt_bank", *PROMPT_AXES)
# torch.nn.Linear's default initialization: uniform in +-1/sqrt(fan_in).
LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def max_pool(values: jax.Array, tokens: jax.Array) -> jax.Array:
    """Max of `values` [B, T, D] over real positions (`tokens` [B, T] > 0) -> [B, D].

    An all-padding row gives zeros.
    """
    real = (tokens > 0)[..., None]  # [B, T, 1]
    pooled = jnp.max(jnp.where(real, values, -jnp.inf), axis=1)  # [B, D]
    return jnp.where(real.any(axis=1), pooled, 0.0)


def first_source(sources: np.ndarray) -> Initializer:
    """Initializer copying source prompt 0 into every target prompt ([P, H] or [N, P, H])."""

    def init(rng: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        del rng
        return jnp.broadcast_to(jnp.asarray(sources[0], dtype), tuple(shape))

    return init


class AttemptPrompt(nn.Module):
    """ATTEMPT's per-input prompt: the target prompt plus an attention mix of [sources; target].

    Parameters: `prompt` [P, H] (the target prompt; [N, P, H] with `num_tasks` N > 1),
    `attention/down` [H, r], `attention/up` [r, H], `attention/scale` [H], `attention/bias` [H].

    Attributes:
      length: P; every source prompt must have this length.
      sources: loader `() -> [k, P, H]` array of the frozen source prompts (gin:
        `@prompt_files.source_prompts_loader()` with `paths = %SOURCE_PROMPTS`).
      rank: r, the attention network's bottleneck (ATTEMPT_RANK; the paper uses 100).
      num_tasks: N target prompts sharing the attention network (multi-task ATTEMPT).
      temperature: T of the softmax; None means H * e (the paper's d * exp(1)).
      prompt_init: initializer of the target prompt(s); None copies source prompt 0.
      layer_norm_epsilon: epsilon of the attention network's layer norm (torch's 1e-5).
      dtype: dtype of the returned prompt.
    """

    length: int
    sources: SourceLoader
    rank: int = 100
    num_tasks: int = 1
    temperature: float | None = None
    prompt_init: Initializer | None = None
    layer_norm_epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @property
    def num_task_ids(self) -> int:
        """Task ids this prompt has target prompts for."""
        return self.num_tasks

    def source_prompts(self, width: int) -> np.ndarray:
        """The frozen source prompts [k, P, H], checked against P and H."""
        sources = np.asarray(self.sources(), np.float32)
        if sources.ndim != 3 or sources.shape[0] < 1:
            raise ValueError(
                f"ATTEMPT's source prompts have shape {sources.shape}; expected [k, P, H] with "
                "k >= 1: list one prompt file, run folder or PEFT adapter per source in "
                "SOURCE_PROMPTS."
            )
        if sources.shape[1:] != (self.length, width):
            raise ValueError(
                f"ATTEMPT's source prompts are [P, H] = {list(sources.shape[1:])} but the target "
                f"prompt is [{self.length}, {width}]: set PROMPT_LENGTH to the sources' length "
                "and use sources trained on a model of the same width."
            )
        return sources

    @nn.compact
    def __call__(
        self,
        input_tokens: jax.Array,
        embedded_inputs: jax.Array,
        task_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Computes each example's prompt.

        Args:
          input_tokens: [B, T] int token ids (0 is padding).
          embedded_inputs: [B, T, H] frozen input embeddings.
          task_ids: [B] ids in [0, N) picking each example's target prompt; None means task 0.

        Returns:
          [B, P, H] prompt.
        """
        batch, width = embedded_inputs.shape[0], embedded_inputs.shape[-1]
        host_sources = self.source_prompts(width)
        sources = jnp.asarray(host_sources)  # [k, P, H], a constant
        init = self.prompt_init or first_source(host_sources)
        if self.num_tasks > 1:
            table = self.param(
                "prompt",
                nn.with_logical_partitioning(init, TASK_AXES),
                (self.num_tasks, self.length, width),
            )  # [N, P, H]
            ids = task_ids_or_default(
                task_ids,
                batch,
                self.num_tasks,
                f"AttemptPrompt has {self.num_tasks} target prompts",
                "train it on a mixture with task ids, or set NUM_TASKS = 1.",
            )
            target = select_by_task(table, ids)  # [B, P, H]
        else:
            single = self.param(
                "prompt", nn.with_logical_partitioning(init, PROMPT_AXES), (self.length, width)
            )  # [P, H]
            target = jnp.broadcast_to(single[None], (batch, self.length, width))
        pooled_input = jax.lax.stop_gradient(max_pool(embedded_inputs, input_tokens))  # [B, H]
        query = AttentionNetwork(self.rank, self.layer_norm_epsilon, name="attention")(
            pooled_input.astype(jnp.float32)
        )  # [B, H]
        candidates = jnp.concatenate(
            [jnp.broadcast_to(sources[None], (batch, *sources.shape)), target[:, None]], axis=1
        )  # [B, k+1, P, H]
        keys = candidates.max(axis=2)  # [B, k+1, H]
        temperature = self.temperature or width * math.e
        weights = jax.nn.softmax(jnp.einsum("bjh,bh->bj", keys, query) / temperature, axis=-1)
        mixed = jnp.einsum("bj,bjph->bph", weights, candidates)  # [B, P, H]
        return (target + mixed).astype(self.dtype)


class AttentionNetwork(nn.Module):
    """G(x) = LayerNorm(W_up . SiLU(W_down . x)): [B, H] -> [B, H], no biases in the projections.

    Attributes:
      rank: r.
      epsilon: layer-norm epsilon.
    """

    rank: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        width = inputs.shape[-1]
        down = self.param(
            "down",
            nn.with_logical_partitioning(LINEAR_INIT, ("prompt_embed", "prompt_rank")),
            (width, self.rank),
        )
        up = self.param(
            "up",
            nn.with_logical_partitioning(LINEAR_INIT, ("prompt_rank", "prompt_embed")),
            (self.rank, width),
        )
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("prompt_embed",)), (width,)
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("prompt_embed",)), (width,)
        )
        hidden = nn.silu(inputs @ down) @ up  # [B, H]
        mean = hidden.mean(axis=-1, keepdims=True)
        variance = ((hidden - mean) ** 2).mean(axis=-1, keepdims=True)
        return (hidden - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale + bias
