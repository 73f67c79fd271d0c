"""Decoding, scoring and rank classification of one `PromptModel`, sharded on the params' mesh.

A `SinglePromptPredictor` runs on whatever mesh its parameters live on (`mesh_of(params)`): every
process of a multi-host run calls it with the same host batch; the batch becomes a global array
split over "data" (each process hands over its own devices' rows), the model's activation
constraints are active while tracing, and the results come back replicated, so every process
reads the same numpy outputs. Parameters that live on one device (plain `jax.jit` use, tests)
run as before. There is no unsharded fallback.

Letters: B batch, T input length, S target length, C number of label strings.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import jax
import numpy as np

from prompt_tuning.parallel import partitioning
from prompt_tuning.predict.rank_classification import Batch, label_batch

DECODE_METHODS = ("greedy", "beam")


class Predictor(Protocol):
    """What the evaluator needs from a model: decoded tokens, scores and rank choices."""

    def predict(self, params: Any, batch: Batch) -> np.ndarray:
        """Returns decoded tokens `[B, S]`."""

    def score(self, params: Any, batch: Batch) -> np.ndarray:
        """Returns the summed target log-likelihoods `[B]`."""

    def classify(self, params: Any, batch: Batch, label_tokens: np.ndarray) -> np.ndarray:
        """Returns the index `[B]` of the best-scoring row of `label_tokens [C, S]`."""


def mesh_of(params: Any) -> jax.sharding.Mesh | None:
    """The mesh the parameters live on, or None for unsharded (single-device / numpy) params."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return sharding.mesh
    return None


def place_batch(params: Any, batch: Batch) -> Batch:
    """The host batch as global arrays on the params' mesh (unchanged for unsharded params).

    Rows are split over "data" when the data axis divides them (each process passes its own
    devices' rows; every process holds the same host batch), else replicated.
    """
    mesh = mesh_of(params)
    if mesh is None:
        return batch
    rows = batch["encoder_input_tokens"].shape[0]
    if rows % mesh.shape[partitioning.DATA_AXIS]:
        return partitioning.replicate(batch, mesh)
    return partitioning.global_batch(batch, mesh)


def _replicated_output(x: jax.Array, mesh: jax.sharding.Mesh | None) -> jax.Array:
    """`x` gathered on every device, so every process can read all of it."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, partitioning.replicated(mesh))


# One jitted function per model object and mesh (static, hashed by identity / value) and decoding
# options, so that every evaluator and predictor of a model shares the compiled programs.
@functools.partial(
    jax.jit, static_argnums=(0, 1), static_argnames=("method", "beam_size", "max_decode_length")
)
def _predict(
    model: Any,
    mesh: jax.sharding.Mesh | None,
    params: Any,
    batch: Batch,
    method: str,
    beam_size: int,
    max_decode_length: Any,
) -> jax.Array:
    """`model.predict_batch`, jitted, on `mesh` when given."""

    def run() -> jax.Array:
        return model.predict_batch(
            params, batch, method=method, beam_size=beam_size, max_decode_length=max_decode_length
        )

    if mesh is None:
        return run()
    with partitioning.activation_sharding(mesh):
        return _replicated_output(run(), mesh)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _score(model: Any, mesh: jax.sharding.Mesh | None, params: Any, batch: Batch) -> jax.Array:
    """`model.score_batch`, jitted, on `mesh` when given."""
    if mesh is None:
        return model.score_batch(params, batch)
    with partitioning.activation_sharding(mesh):
        return _replicated_output(model.score_batch(params, batch), mesh)


class SinglePromptPredictor:
    """Jitted decoding, scoring and rank classification with one `PromptModel`."""

    def __init__(
        self,
        model: Any,
        decode_method: str = "greedy",
        beam_size: int = 4,
        max_decode_length: int | None = None,
    ):
        """Binds the model and the decoding options.

        Args:
          model: a `PromptModel` (`predict_batch`, `score_batch`).
          decode_method: "greedy" or "beam".
          beam_size: beams for "beam".
          max_decode_length: decode at most this many tokens (None: the target length).

        Raises:
          ValueError: unknown `decode_method`.
        """
        if decode_method not in DECODE_METHODS:
            raise ValueError(
                f"Unknown decode_method {decode_method!r}; choose one of {DECODE_METHODS}."
            )
        self.model = model
        self._decode_options = dict(
            method=decode_method, beam_size=beam_size, max_decode_length=max_decode_length
        )

    def predict(self, params: Any, batch: Batch) -> np.ndarray:
        """Decoded tokens `[B, S]`."""
        self.model.check_task_ids(batch)
        mesh = mesh_of(params)
        tokens = _predict(
            self.model, mesh, params, place_batch(params, batch), **self._decode_options
        )
        return partitioning.to_host(tokens)

    def score(self, params: Any, batch: Batch) -> np.ndarray:
        """Summed target log-likelihoods `[B]`."""
        self.model.check_task_ids(batch)
        scores = _score(self.model, mesh_of(params), params, place_batch(params, batch))
        return partitioning.to_host(scores)

    def label_scores(self, params: Any, batch: Batch, label_tokens: np.ndarray) -> np.ndarray:
        """Log-likelihood `[B, C]` of every label for every example."""
        scores = self.score(params, label_batch(batch, label_tokens))  # [B*C]
        return scores.reshape(batch["encoder_input_tokens"].shape[0], label_tokens.shape[0])

    def classify(self, params: Any, batch: Batch, label_tokens: np.ndarray) -> np.ndarray:
        """Index `[B]` of each example's most likely label (the first one on ties)."""
        return np.argmax(self.label_scores(params, batch, label_tokens), axis=1)
