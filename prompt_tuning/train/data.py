"""Batches for training and evaluation: seqio task/mixture -> encoder-decoder features -> batches.

Determinism and resuming: with `shuffle=True` the order is fixed by `seed` (seqio seeds its
preprocessors and the shuffle buffer from it) and the dataset repeats without end
(`num_epochs=None`), so the sequence of batches is a pure function of (task, lengths, batch size,
seed, shard). A run resumed at step N calls `get_dataset(...)` again and skips the N batches it had
already consumed (`dataset.skip(N)`, see `skip_batches`), so it sees exactly the batches an
uninterrupted run would. Skipping re-reads those examples, which costs data-pipeline time only.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

TASK_IDS = "task_ids"


class EncDecWithTaskIdsConverter(seqio.EncDecFeatureConverter):
    """`seqio.EncDecFeatureConverter(pack=False)` that also passes `task_ids` through.

    seqio pads every pass-through feature, so the scalar `task_ids` travels as a length-1 vector
    and `get_dataset` flattens the batched [B, 1] back to [B].
    """

    def __init__(self, **kwargs):
        spec = seqio.FeatureConverter.FeatureSpec(tf.int32, rank=1)
        super().__init__(pack=False, passthrough_features={TASK_IDS: spec}, **kwargs)

    def __call__(self, dataset: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        """Converts examples whose `task_ids` is a scalar int."""
        dataset = dataset.map(
            lambda ex: {**ex, TASK_IDS: tf.reshape(tf.cast(ex[TASK_IDS], tf.int32), [1])}
        )
        return super().__call__(dataset, {**task_feature_lengths, TASK_IDS: 1})


def import_task_modules(modules: str | Sequence[str] | None) -> None:
    """Imports the modules that register tasks (MIXTURE_OR_TASK_MODULE, default `tasks`).

    Raises:
      ModuleNotFoundError: naming the module and the macro.
    """
    names = [modules] if isinstance(modules, str) else list(modules or [])
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"MIXTURE_OR_TASK_MODULE {name!r} cannot be imported ({error}). Name a module "
                "that registers seqio tasks, e.g. 'tasks'."
            ) from error


def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
    """Looks up a registered seqio task or mixture.

    Raises:
      ValueError: no task or mixture has this name; the message lists the closest names.
    """
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown task or mixture {name!r} (MIXTURE_OR_TASK_NAME). Is the module registering "
            f"it imported (MIXTURE_OR_TASK_MODULE, default `tasks`)?{hint}"
        ) from None


def get_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    num_epochs: int | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
) -> tf.data.Dataset:
    """Converted, batched examples of a seqio task or mixture.

    Args:
      mixture_or_task_name: registered seqio task or mixture (MIXTURE_OR_TASK_NAME).
      task_feature_lengths: e.g. {"inputs": 256, "targets": 16} (TASK_FEATURE_LENGTHS).
      split: dataset split ("train", "validation", ...).
      batch_size: examples per batch ON THIS HOST (global batch // num_shards).
      shuffle: shuffle examples (seeded by `seed`).
      seed: seed of shuffling and random preprocessing; fixed for reproducible, resumable runs.
      num_epochs: passes over the data; None repeats forever (training).
      shard_id: this host's shard (`jax.process_index()`).
      num_shards: number of shards (`jax.process_count()`).

    Returns:
      A `tf.data.Dataset` of dicts: `encoder_input_tokens [B, T]`, `decoder_input_tokens [B, S]`,
      `decoder_target_tokens [B, S]`, `decoder_loss_weights [B, S]` (and `task_ids [B]` for
      mixtures that provide it). Training batches drop the remainder; finite ones keep it.

    Raises:
      ValueError: unknown task (with close names) or missing feature lengths.
    """
    provider = get_task_or_mixture(mixture_or_task_name)
    missing = [k for k in ("inputs", "targets") if k not in task_feature_lengths]
    if missing:
        raise ValueError(
            f"TASK_FEATURE_LENGTHS {dict(task_feature_lengths)} lacks {missing}; "
            "give e.g. {'inputs': 256, 'targets': 16}."
        )
    lengths = {k: v for k, v in task_feature_lengths.items() if k in ("inputs", "targets")}
    dataset = provider.get_dataset(
        sequence_length=lengths,
        split=split,
        use_cached=False,
        shuffle=shuffle,
        seed=seed,
        shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
        num_epochs=num_epochs,
        try_in_mem_cache=False,
    )
    if TASK_IDS in dataset.element_spec:
        dataset = EncDecWithTaskIdsConverter()(dataset, lengths)
        dataset = dataset.map(lambda ex: {**ex, TASK_IDS: ex[TASK_IDS][0]})
    else:
        dataset = seqio.EncDecFeatureConverter(pack=False)(dataset, lengths)
    dataset = dataset.batch(batch_size, drop_remainder=num_epochs is None)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def skip_batches(dataset: tf.data.Dataset, num_batches: int) -> tf.data.Dataset:
    """Skips the batches a resumed run has already consumed (see the module docstring)."""
    return dataset.skip(num_batches) if num_batches else dataset


def as_numpy_batches(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Iterates a batched dataset as dicts of numpy arrays."""
    yield from dataset.as_numpy_iterator()


def replica_rows(dataset: tf.data.Dataset, start: int, stop: int) -> tf.data.Dataset:
    """Rows `start:stop` of every batch: one data-parallel replica set's share of a global batch.

    The trainer shards batches, not files: every process reads the same global stream (seeded,
    so the same everywhere) and keeps its replica set's rows (`distributed.data_layout`), so a run
    sees the same batches whatever the number of processes, and a resumed run skips to the same
    position on every host.
    """
    return dataset.map(lambda batch: {name: value[start:stop] for name, value in batch.items()})
