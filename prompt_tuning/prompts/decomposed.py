"""Low-rank prompts from decomposed prompt tuning (DPT, Xiao et al., 2023).

- `DecomposedPrompt` (section 3.1, equation 5): P_emb = A B with A [H, b], B [b, P]; the prompt
  fed to the model is P_emb^T [P, H]. Trainable parameters: H*b + b*P (11,240 for T5-Large with
  P = 100, b = 10).
- `RankProbePrompt` (section 2.2, equation 3): P_emb = U ReLU(Sigma) V with only the diagonal of
  Sigma trained; the number of positive diagonal entries tracks the prompt's rank.

Letters: B batch, T input length, P prompt length, H model dim, b bottleneck, r = min(P, H).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import expand_to_batch


class DecomposedPrompt(nn.Module):
    """DPT prompt: `prompt = (A B)^T` [P, H] with parameters `a` [H, b] and `b` [b, P].

    The paper initializes A and B from a Gaussian without giving its std; A ~ N(0, 1) and
    B ~ N(0, 1/b) give prompt entries of unit variance.

    Attributes:
      length: P.
      bottleneck: b (the paper's default is 10).
      a_init: initializer of A [H, b].
      b_init: initializer of B [b, P].
      dtype: dtype of the returned prompt.
    """

    length: int
    bottleneck: int = 10
    a_init: Callable[..., jax.Array] = nn.initializers.normal(1.0)
    b_init: Callable[..., jax.Array] = initializers.normal_fan_in  # A B then has unit variance
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, input_tokens: jax.Array, embedded_inputs: jax.Array, task_ids: jax.Array | None = None
    ) -> jax.Array:
        """Returns the low-rank prompt for each example.

        Args:
          input_tokens: [B, T] int token ids.
          embedded_inputs: [B, T, H] embedded inputs (only H is read).
          task_ids: unused.

        Returns:
          [B, P, H] prompt.
        """
        del task_ids
        width = embedded_inputs.shape[-1]
        a = self.param(
            "a",
            nn.with_logical_partitioning(self.a_init, ("prompt_embed", "prompt_bottleneck")),
            (width, self.bottleneck),
        )
        b = self.param(
            "b",
            nn.with_logical_partitioning(self.b_init, ("prompt_bottleneck", "prompt")),
            (self.bottleneck, self.length),
        )
        prompt = (a @ b).T  # [H, P] -> [P, H]
        return expand_to_batch(prompt.astype(self.dtype), input_tokens.shape[0])

    def fold(self, variables: Any, width: int | None = None) -> np.ndarray:
        """Returns the equivalent plain prompt (A B)^T [P, H] from this module's variables."""
        del width  # A holds it
        params = nn.unbox(variables)["params"]
        return np.asarray(params["a"] @ params["b"]).T


class RankProbePrompt(nn.Module):
    """DPT's rank probe: `prompt = (U ReLU(diag(sigma)) V)^T` [P, H], only `sigma` [r] trained.

    U [H, r] and V [r, P] have orthonormal columns/rows, drawn from the fixed `basis_seed` (not
    parameters, so they stay fixed and need no checkpointing); only the first r = min(P, H)
    columns of the paper's square U [H, H] and rows of V [P, P] meet the rectangular diagonal
    Sigma [H, P], so the rest are omitted. The paper trains U and V too in its analysis;
    `trainable_bases=True` does that (parameters `u`, `v` initialized to the same bases).

    Attributes:
      length: P.
      sigma_init: initial value of every diagonal entry (the paper: positive values).
      basis_seed: seed of the random orthonormal U and V.
      trainable_bases: also train U and V.
      dtype: dtype of the returned prompt.
    """

    length: int
    sigma_init: float = 1.0
    basis_seed: int = 0
    trainable_bases: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, input_tokens: jax.Array, embedded_inputs: jax.Array, task_ids: jax.Array | None = None
    ) -> jax.Array:
        """Returns the probe's prompt for each example.

        Args:
          input_tokens: [B, T] int token ids.
          embedded_inputs: [B, T, H] embedded inputs (only H is read).
          task_ids: unused.

        Returns:
          [B, P, H] prompt.
        """
        del task_ids
        width = embedded_inputs.shape[-1]
        rank = min(self.length, width)
        sigma = self.param(
            "sigma",
            nn.with_logical_partitioning(
                nn.initializers.constant(self.sigma_init), ("prompt_rank",)
            ),
            (rank,),
        )
        u, v = self.bases(width)
        if self.trainable_bases:
            u = self.param(
                "u", nn.with_logical_partitioning(lambda *_: u, ("prompt_embed", "prompt_rank"))
            )
            v = self.param(
                "v", nn.with_logical_partitioning(lambda *_: v, ("prompt_rank", "prompt"))
            )
        prompt = ((u * nn.relu(sigma)) @ v).T  # [H, P] -> [P, H]
        return expand_to_batch(prompt.astype(self.dtype), input_tokens.shape[0])

    def bases(self, width: int) -> tuple[jax.Array, jax.Array]:
        """The fixed bases: U [H, r] with orthonormal columns, V [r, P] with orthonormal rows."""
        rank = min(self.length, width)
        key_u, key_v = jax.random.split(jax.random.key(self.basis_seed))
        u = nn.initializers.orthogonal()(key_u, (width, rank))  # [H, r]
        v = nn.initializers.orthogonal()(key_v, (rank, self.length))  # [r, P]
        return u, v

    def fold(self, variables: Any, width: int | None = None) -> np.ndarray:
        """Returns the equivalent plain prompt [P, H] from this module's variables.

        Args:
          variables: `{"params": {"sigma": [r], ...}}` of this module.
          width: the model dim H; needed unless the bases are trainable (then read from `u`).

        Returns:
          [P, H] prompt.

        Raises:
          ValueError: fixed bases and no width.
        """
        params = nn.unbox(variables)["params"]
        if "u" in params:
            u, v = params["u"], params["v"]
        elif width is None:
            raise ValueError(
                "RankProbePrompt.fold needs the model dim: call fold(variables, width=H)."
            )
        else:
            u, v = self.bases(width)
        return np.asarray(((u * jax.nn.relu(params["sigma"])) @ v).T)


def num_positive(variables: Any) -> int:
    """Counts positive diagonal entries of a `RankProbePrompt`'s Sigma (the paper's Figure 3).

    Args:
      variables: the probe's variables `{"params": {"sigma": [r], ...}}`, or any tree holding
        a `sigma` leaf under a `prompt` scope (e.g. the whole model's params).

    Returns:
      The number of entries of sigma above zero.
    """
    tree = nn.unbox(variables)
    tree = tree.get("params", tree)
    sigma = _find_leaf(tree, "sigma")
    if sigma is None:
        raise ValueError(
            "No `sigma` parameter found: num_positive needs a RankProbePrompt's variables."
        )
    return int(np.sum(np.asarray(sigma) > 0))


def _find_leaf(tree: Any, name: str) -> Any:
    """Depth-first search for the first leaf called `name` in a nested dict."""
    if name in tree:
        return tree[name]
    for child in tree.values():
        if isinstance(child, dict):
            found = _find_leaf(child, name)
            if found is not None:
                return found
    return None
