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

`embedding` arguments accept an array [V, H], a `.npy` file, a T5X/HF checkpoint directory (its
`token_embedder/embedding` is read), or None for the model's own embedding, so gin can bind
`%INITIAL_CHECKPOINT_PATH`.

No embedding is read inside `init`, which runs under `jax.eval_shape` and `jit`: the trainer finds
the embeddings these initializers need (`embedding_sources`), reads each once on the host (the
frozen model's own `token_embedder/embedding` is the array it already loaded, sharded), and passes
them into the jitted initialization as arguments (`provided_embeddings`), so the `[V, H]` table is
never traced into the compiled program as a constant. Outside the trainer (a plain
`module.init`), an initializer reads its embedding on first use and keeps it.
"""

import contextlib
import contextvars
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import files, peft_format

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
        table = source.table(shape)
        return _sample_rows(rng, table, shape[0], num_samples).astype(dtype)

    source = EmbeddingSource(embedding)
    init.embedding_source = source
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
        table = source.table(shape)
        rows = [_label_row(label, vocabulary, table).astype(dtype) for label in labels]
        rest = _sample_rows(rng, table, length - len(rows), num_samples).astype(dtype)
        return jnp.concatenate([jnp.stack(rows), rest], axis=0)  # [P, H]

    source = EmbeddingSource(embedding)
    init.embedding_source = source
    return init


def from_npy(path: str) -> Initializer:
    """A prompt saved with `numpy.save`, or a Hugging Face PEFT prompt-tuning adapter folder.

    Args:
      path: a `.npy` file holding a [P, H] array, or a PEFT adapter folder (`adapter_config.json`,
        `adapter_model.safetensors`: its `prompt_embeddings` [P, H], `prompts.peft_format`).

    Returns:
      An initializer `init(rng, shape=[P, H], dtype)` (rng unused).
    """

    def load() -> np.ndarray:
        if os.path.isdir(path):
            return peft_format.read_adapter(path)
        return files.read_npy(path, "The prompt initialization file (from_npy)")

    read = _read_once(load)

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del rng
        value = read()
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

    read = _read_once(lambda: read_checkpoint_variable(path, variable))

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del rng
        value = read()
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


def _read_once(read: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    """`read`, called on first use only (an initializer runs under eval_shape and again in jit)."""
    cache: list[np.ndarray] = []

    def once() -> np.ndarray:
        if not cache:
            cache.append(np.asarray(read()))
        return cache[0]

    return once


# The embeddings the caller passes into a traced initialization, by `EmbeddingSource.key`.
_PROVIDED: contextvars.ContextVar[Mapping[Any, Any] | None] = contextvars.ContextVar(
    "provided_embeddings", default=None
)


@dataclasses.dataclass(eq=False)
class EmbeddingSource:
    """Where an initializer's token embedding [V, H] comes from.

    Attributes:
      embedding: an array [V, H], a `.npy` file, a checkpoint folder, or None for the frozen
        model's own `token_embedder/embedding`.
    """

    embedding: Any

    @property
    def key(self) -> Any:
        """Identifies the embedding: None (the model's), a resolved path, or the array's id."""
        if self.embedding is None:
            return None
        if isinstance(self.embedding, str | os.PathLike):
            return os.path.realpath(os.fspath(self.embedding))
        return ("array", id(self.embedding))

    def read(self) -> np.ndarray:
        """Reads the embedding on the host (a checkpoint opens only that array)."""
        if self.embedding is None:
            raise ValueError(
                "This prompt initializer samples the model's own embedding, which only the "
                "trainer can pass (INITIAL_CHECKPOINT_PATH or RANDOM_SEED); give the "
                "initializer an embedding array, .npy file or checkpoint instead."
            )
        if isinstance(self.embedding, str | os.PathLike):
            return read_checkpoint_variable(os.fspath(self.embedding), EMBEDDING_VARIABLE)
        return np.asarray(self.embedding)

    def table(self, shape: Sequence[int]) -> jax.Array:
        """The embedding [V, H] to sample from: the one passed in, else read once on the host."""
        provided = _PROVIDED.get() or {}
        if self.key in provided:
            table = provided[self.key]
            table = table() if callable(table) else table
        else:
            if not hasattr(self, "_host"):
                self._host = self.read()
            table = jnp.asarray(self._host)
        if table.ndim != 2 or table.shape[1] != shape[-1]:
            raise ValueError(
                f"The token embedding has shape {tuple(table.shape)} but the prompt is "
                f"{tuple(shape)}: its width must equal the model dim H; point the initializer at "
                "the checkpoint of the model being tuned."
            )
        return table


@contextlib.contextmanager
def provided_embeddings(tables: Mapping[Any, Any]) -> Iterator[None]:
    """Within the block, initializers take their embedding from `tables` (by source key).

    Args:
      tables: `{EmbeddingSource.key: [V, H] array, or a function returning one}`, e.g. traced
        arguments of the jitted initialization, or placeholders for shape inference.
    """
    token = _PROVIDED.set(dict(tables))
    try:
        yield
    finally:
        _PROVIDED.reset(token)


def embedding_sources(module: Any) -> list[EmbeddingSource]:
    """The embedding sources of the initializers in `module`'s fields (recursively).

    Args:
      module: a prompt module (or any dataclass holding initializers / sub-modules).

    Returns:
      Distinct sources (by key), in field order.
    """
    found: dict[Any, EmbeddingSource] = {}

    def visit(value: Any, depth: int) -> None:
        source = getattr(value, "embedding_source", None)
        if isinstance(source, EmbeddingSource):
            found.setdefault(source.key, source)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item, depth)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type) and depth < 8:
            for field in dataclasses.fields(value):
                if field.name not in ("parent", "name"):
                    visit(getattr(value, field.name, None), depth + 1)

    visit(module, 0)
    return list(found.values())


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
