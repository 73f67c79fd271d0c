"""Initializers for a plain prompt [P, H] (Lester et al., 2021, section 3.2).

Each factory returns a Flax initializer `init(rng, shape, dtype=float32) -> [P, H]`:
- `random_uniform`: uniform in [-scale, scale] (the paper uses 0.5).
- `sampled_vocab`: rows of the frozen token embedding, drawn from the N most common tokens
  (T5's SentencePiece vocabulary is ordered by frequency; the paper uses N = 5,000).
- `class_labels`: the embeddings of the task's label strings (multi-piece labels averaged), the
  remaining rows from `sampled_vocab`.
- `from_npy` / `from_checkpoint`: a prompt trained earlier.
- `per_layer(init)`: `init` applied to each layer's [P, H] slice of an [L, P, H] parameter;
  `normal_fan_in`: N(0, 1/shape[0]) for kernels stored input axis first.

`embedding` arguments accept an array [V, H], a `.npy` file, or a T5X/HF checkpoint directory (its
`token_embedder/embedding` is read), so gin can bind `%INITIAL_CHECKPOINT_PATH`.
"""

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import files

Initializer = Callable[..., jax.Array]
EMBEDDING_VARIABLE = "token_embedder/embedding"
PROMPT_VARIABLE = "encoder/prompt/prompt"


def random_uniform(scale: float = 0.5) -> Initializer:
    """Uniform initialization in [-scale, scale].

    Args:
      scale: half-width of the interval (Lester et al. use 0.5).

    Returns:
      An initializer `init(rng, shape, dtype)`.
    """

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(rng, shape, dtype, minval=-scale, maxval=scale)

    return init


def sampled_vocab(embedding: Any, num_samples: int = 5000) -> Initializer:
    """Rows of the token embedding, drawn from its first `num_samples` rows.

    Rows are drawn without replacement; only when P exceeds the number of candidate rows are they
    drawn with replacement (with a warning).

    Args:
      embedding: the frozen token embedding [V, H], a `.npy` path or a checkpoint path.
      num_samples: how many of the most common tokens to draw from (N).

    Returns:
      An initializer `init(rng, shape=[P, H], dtype)`.
    """

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        table = _embedding_table(embedding, shape)
        return _sample_rows(rng, table, shape[0], num_samples).astype(dtype)

    return init


def class_labels(
    labels: Sequence[str] | None, vocabulary: Any, embedding: Any, num_samples: int = 5000
) -> Initializer:
    """Label embeddings in the first rows, sampled vocabulary in the rest.

    Args:
      labels: the task's label strings, e.g. ("positive", "negative").
      vocabulary: a seqio vocabulary (its `encode(str) -> list[int]` tokenizes each label).
      embedding: the frozen token embedding [V, H], a `.npy` path or a checkpoint path.
      num_samples: N for the sampled-vocabulary rows.

    Returns:
      An initializer `init(rng, shape=[P, H], dtype)`.

    Raises:
      ValueError: (when called) no labels, more labels than prompt rows, or a label that
        tokenizes to nothing.
    """

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        if not labels:
            raise ValueError(
                "class_labels initialization needs the task's label strings; set the gin macro "
                "LABELS (e.g. LABELS = ['positive', 'negative']) or use another initializer."
            )
        length = shape[0]
        if len(labels) > length:
            raise ValueError(
                f"{len(labels)} class labels do not fit in a prompt of length {length}; "
                "increase PROMPT_LENGTH or pass fewer labels."
            )
        table = _embedding_table(embedding, shape)
        rows = [_label_row(label, vocabulary, table) for label in labels]
        rest = _sample_rows(rng, table, length - len(rows), num_samples)
        return jnp.concatenate([jnp.stack(rows), rest], axis=0).astype(dtype)  # [P, H]

    return init


def from_npy(path: str) -> Initializer:
    """A prompt saved with `numpy.save`.

    Args:
      path: a `.npy` file holding a [P, H] array.

    Returns:
      An initializer `init(rng, shape=[P, H], dtype)` (rng unused).
    """

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del rng
        value = files.read_npy(path, "The prompt initialization file (from_npy)")
        _check_shape(value.shape, shape, f"the prompt in {path}")
        return jnp.asarray(value, dtype)

    return init


def from_checkpoint(path: str, variable: str = PROMPT_VARIABLE) -> Initializer:
    """One variable of a T5X checkpoint, e.g. a prompt trained in an earlier run.

    Args:
      path: the checkpoint directory (e.g. `.../checkpoint_1100000`).
      variable: "/"-separated parameter path inside the checkpoint.

    Returns:
      An initializer `init(rng, shape=[P, H], dtype)` (rng unused).
    """

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del rng
        value = read_checkpoint_variable(path, variable)
        _check_shape(value.shape, shape, f"{variable} in {path}")
        return jnp.asarray(value, dtype)

    return init


def read_checkpoint_variable(path: str, variable: str) -> np.ndarray:
    """Reads one parameter of a T5X/HF checkpoint as a numpy array.

    Args:
      path: checkpoint directory, or a `.npy` file (returned whole).
      variable: "/"-separated parameter path, e.g. "token_embedder/embedding".

    Returns:
      The array.

    Raises:
      KeyError: the checkpoint has no such variable (`t5.checkpoints.MissingParameterError`).
      ValueError: the path is missing or not a checkpoint (`t5.checkpoints.CheckpointError`).
    """
    if path.endswith(".npy"):
        return files.read_npy(path, f"The {variable} file")
    from prompt_tuning.t5 import checkpoints  # Lazy: only checkpoint paths need it.

    # A legacy T5X checkpoint opens only this array (never the whole model or optimizer state).
    return np.asarray(checkpoints.read_variable(path, variable))


def _embedding_table(embedding: Any, shape: Sequence[int]) -> jax.Array:
    """Returns the embedding [V, H] as an array, checking its width against the prompt's H."""
    if isinstance(embedding, str | os.PathLike):
        embedding = read_checkpoint_variable(os.fspath(embedding), EMBEDDING_VARIABLE)
    table = jnp.asarray(embedding)
    if table.ndim != 2 or table.shape[1] != shape[-1]:
        raise ValueError(
            f"The token embedding has shape {tuple(table.shape)} but the prompt is {tuple(shape)}: "
            "its width must equal the model dim H; point the initializer at the checkpoint of "
            "the model being tuned."
        )
    return table


def _sample_rows(rng: jax.Array, table: jax.Array, count: int, num_samples: int) -> jax.Array:
    """Draws `count` rows of `table` [V, H] among its first `num_samples` rows -> [count, H]."""
    candidates = min(num_samples, table.shape[0])
    replace = count > candidates
    if replace:
        warnings.warn(
            f"Sampling {count} prompt rows from only {candidates} vocabulary rows: drawing with "
            "replacement, so some rows repeat.",
            stacklevel=3,
        )
    index = jax.random.choice(rng, candidates, (count,), replace=replace)
    return table[index]


def _label_row(label: str, vocabulary: Any, table: jax.Array) -> jax.Array:
    """Mean embedding [H] of the pieces of one label string."""
    ids = list(vocabulary.encode(label))
    if not ids:
        raise ValueError(f"Label {label!r} tokenizes to no ids; remove it from LABELS.")
    if max(ids) >= table.shape[0]:
        raise ValueError(
            f"Label {label!r} has token id {max(ids)} but the embedding has only "
            f"{table.shape[0]} rows; use the vocabulary of the model being tuned."
        )
    return table[jnp.asarray(ids)].mean(axis=0)


def _check_shape(actual: Sequence[int], expected: Sequence[int], what: str) -> None:
    """Raises a ValueError naming both shapes when a loaded prompt does not fit."""
    if tuple(actual) != tuple(expected):
        raise ValueError(
            f"Shape mismatch: {what} is {tuple(actual)} but the prompt is {tuple(expected)} "
            "[P, H]; set PROMPT_LENGTH to its length and use the model it was trained with."
        )


def normal_fan_in(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """N(0, 1/shape[0]): unit-variance outputs for unit-variance inputs (input axis first)."""
    return jax.random.normal(rng, shape, dtype) / jnp.sqrt(jnp.asarray(shape[0], dtype))


def per_layer(init: Initializer) -> Initializer:
    """An initializer of an [L, P, H] parameter applying `init` to each layer's [P, H] slice,
    each with its own key (split from the parameter's)."""

    def stacked(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        keys = jax.random.split(rng, shape[0])
        return jnp.stack([init(key, tuple(shape[1:]), dtype) for key in keys])  # [L, P, H]

    return stacked
