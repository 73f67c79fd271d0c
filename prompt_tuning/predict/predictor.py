"""The one way to run a prompted model: decode (greedy/beam), score, rank-classify.

`Predictor` wraps a `PromptModel` whose prompt is any prompt module:
- one prompt (`prompts.Prompt`, or any trained prompt module): every row uses it;
- a prompt bank (`PromptBank`, `RaggedPromptBank`): row b uses the prompt of `task_ids[b]`, so
  one pass serves many prompts (mixed-task batches, the server's bank);
- an ensemble (`ensemble.PromptEnsemble`) is a bank whose N copies of the batch each use one
  prompt; it returns every prompt's outputs and their majority vote.

Every path runs the same jitted program (`_program`): the host API (`predict`, `score`,
`classify`) through `jax.jit`'s cache (one compile per model, mesh and shape), the server through
`compile` (ahead of time, for the padded shapes of its buckets; `serve.engine` keeps the table of
compiled buckets). Shardings come from the parameters' mesh (`mesh_of`): every process of a
multi-host run calls the predictor with the same host batch; the batch becomes a global array
split over "data" when the data axis divides its rows (else replicated), the model's activation
constraints are active while tracing, and the results come back replicated, so every process
reads the same numpy outputs. Parameters on one device (plain `jax.jit` use, tests) run unsharded.

Tokenization (`rank_classification.tokenize`) and the decoder's shift-right
(`rank_classification.shift_right`) live next to the label batches that use them.

Batch features: `encoder_input_tokens [B, T]`; optional `task_ids [B]` (bank rows);
`decoder_target_tokens [B, S]` (gives S when no `max_decode_length`), `decoder_input_tokens`,
`decoder_loss_weights` for scoring; optional `decode_lengths [B]`: each row's own maximum
output length (<= S; a row stops there, one compiled program serves short and long requests).

Letters: B batch, T input length, S target length, C number of label strings.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from prompt_tuning.parallel import partitioning
from prompt_tuning.predict.rank_classification import Batch, label_batch
from prompt_tuning.t5 import decoding

DECODE_METHODS = ("greedy", "beam")
KINDS = ("greedy", "beam", "score")  # the compiled programs


def mesh_of(params: Any) -> jax.sharding.Mesh | None:
    """The mesh the parameters live on, or None for unsharded (single-device / numpy) params."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return sharding.mesh
    return None


def replicated_sharding(params: Any) -> jax.sharding.Sharding | None:
    """Where a value every row reads lives (a prompt bank): replicated on the params' mesh, or
    the device of single-device params (None for numpy params)."""
    mesh = mesh_of(params)
    if mesh is not None:
        return partitioning.replicated(mesh)
    return getattr(jax.tree.leaves(params)[0], "sharding", None)


def batch_sharding(params: Any, rows: int) -> jax.sharding.Sharding | None:
    """Batch arrays of `rows` rows: split over "data" when its size divides `rows`, else
    replicated (the params' own device when they live on one; None for numpy params)."""
    mesh = mesh_of(params)
    if mesh is None or rows % mesh.shape[partitioning.DATA_AXIS]:
        return replicated_sharding(params)
    return partitioning.data_sharding(mesh)


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


def _decode(
    model: Any, params: Any, batch: Batch, method: str, beam_size: int, length: int | None
) -> tuple[jax.Array, jax.Array | None]:
    """Decoded tokens `[B, S]` (0 after EOS) and, for "beam", the best beam's score `[B]`."""
    if length is None:
        if "decoder_target_tokens" not in batch:
            raise ValueError("Decoding needs max_decode_length or decoder_target_tokens.")
        length = batch["decoder_target_tokens"].shape[1]
    options = dict(task_ids=batch.get("task_ids"), lengths=batch.get("decode_lengths"))
    inputs = batch["encoder_input_tokens"]
    if method == "greedy":
        return decoding.greedy_decode(model.module, params, inputs, length, **options), None
    tokens, scores = decoding.beam_search(
        model.module, params, inputs, length, beam_size, **options
    )  # [B, W, S], [B, W]
    return tokens[:, 0], scores[:, 0]  # the best beam


# One jitted function for every predictor: the model object and mesh are static (hashed by
# identity / value), so every evaluator and predictor of a model shares the compiled programs.
@functools.partial(
    jax.jit, static_argnums=(0, 1), static_argnames=("kind", "beam_size", "max_decode_length")
)
def _program(
    model: Any,
    mesh: jax.sharding.Mesh | None,
    params: Any,
    batch: Batch,
    kind: str,
    beam_size: int,
    max_decode_length: int | None,
) -> Any:
    """One program of `KINDS`, on `mesh` when given.

    Returns:
      "score": log-likelihoods `[B]`; "greedy"/"beam": `(tokens [B, S], beam scores [B] or None)`.
    """

    def run() -> Any:
        if kind == "score":
            return model.score_batch(params, batch)
        return _decode(model, params, batch, kind, beam_size, max_decode_length)

    if mesh is None:
        return run()
    with partitioning.activation_sharding(mesh):
        out = run()
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, partitioning.replicated(mesh)), out
        )


class Predictor:
    """Jitted decoding, scoring and rank classification with one `PromptModel`.

    The model's prompt decides the mode (module docstring): one prompt, or a bank read through
    each row's `task_ids`.
    """

    def __init__(
        self,
        model: Any,
        decode_method: str = "greedy",
        beam_size: int = 4,
        max_decode_length: int | None = None,
    ):
        """Binds the model and the decoding options.

        Args:
          model: a `PromptModel` (`module`, `score_batch`, `check_task_ids`).
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
        self.decode_method = decode_method
        self.beam_size = beam_size
        self.max_decode_length = max_decode_length

    def _run(self, params: Any, batch: Batch, kind: str) -> Any:
        self.model.check_task_ids(batch)
        out = _program(
            self.model,
            mesh_of(params),
            params,
            place_batch(params, batch),
            kind=kind,
            beam_size=self.beam_size if kind == "beam" else 0,
            max_decode_length=None if kind == "score" else self.max_decode_length,
        )
        return partitioning.to_host(out)

    def predict_with_scores(
        self, params: Any, batch: Batch
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded tokens `[B, S]` and, for beam search, the best beam's score `[B]` (else None)."""
        return self._run(params, batch, self.decode_method)

    def predict(self, params: Any, batch: Batch) -> np.ndarray:
        """Decoded tokens `[B, S]` (0 after EOS)."""
        return self.predict_with_scores(params, batch)[0]

    def score(self, params: Any, batch: Batch) -> np.ndarray:
        """Summed target log-likelihoods `[B]`."""
        return self._run(params, batch, "score")

    def label_scores(self, params: Any, batch: Batch, label_tokens: np.ndarray) -> np.ndarray:
        """Log-likelihood `[B, C]` of every label `label_tokens [C, S]` for every example (each
        example is encoded once for its C labels)."""
        scores = self.score(params, label_batch(batch, label_tokens, repeat_inputs=False))
        return scores.reshape(batch["encoder_input_tokens"].shape[0], label_tokens.shape[0])

    def classify(self, params: Any, batch: Batch, label_tokens: np.ndarray) -> np.ndarray:
        """Index `[B]` of each example's most likely label (the first one on ties)."""
        return np.argmax(self.label_scores(params, batch, label_tokens), axis=1)

    def compile(
        self, kind: str, params: Any, batch: Batch, beam_size: int = 0, max_decode_length: int = 0
    ) -> jax.stages.Compiled:
        """The program of `kind` compiled ahead of time for fixed shapes and shardings.

        Args:
          kind: one of `KINDS`.
          params: the parameters, or `jax.ShapeDtypeStruct`s with shardings (a server passes its
            bank's shape, so one program serves every table of that shape).
          batch: `jax.ShapeDtypeStruct` features (shardings from `batch_sharding`): for "score"
            `encoder_input_tokens`, `decoder_input_tokens`, `decoder_target_tokens`; for
            decoding `encoder_input_tokens` and optionally `decode_lengths`; `task_ids` for a bank.
          beam_size: W for "beam".
          max_decode_length: S for decoding.

        Returns:
          The compiled program: `program(params, batch)` returns what `_program` does.

        Raises:
          ValueError: unknown `kind`.
        """
        if kind not in KINDS:
            raise ValueError(f"Unknown program kind {kind!r}; choose from {KINDS}.")
        return _program.lower(
            self.model,
            mesh_of(params),
            params,
            batch,
            kind=kind,
            beam_size=beam_size if kind == "beam" else 0,
            max_decode_length=None if kind == "score" else max_decode_length,
        ).compile()
