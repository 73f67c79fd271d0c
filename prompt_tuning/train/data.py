"""Batches for training and evaluation: seqio task/mixture -> encoder-decoder features -> batches.

Training (`TrainInput`, via `train_batches`; docs/input.md): a global record index that each
process materialises only its rows of. Row `r` of every global batch reads its own records of a
seeded per-epoch permutation of the task's records and preprocesses them one at a time with the
task's seqio preprocessors, so the global batches are a pure function of (task, lengths, batch
size, seed), whatever the number of processes, and each process preprocesses only its rows. The
input position (each row's record and example within it) is saved with every checkpoint; a
resumed run starts there without replaying the consumed batches.

Evaluation and inference (`get_dataset`): seqio's own pipeline, finite and in order, sharded per
host with `seqio.ShardInfo`. A checkpoint written before input positions existed resumes on the
old training input: `get_dataset(shuffle=True, num_epochs=None)`, this process's rows of each
batch (`replica_rows`) and the consumed batches skipped (`skip_batches`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import weakref
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

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
    lengths = _checked_lengths(task_feature_lengths)
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


# --- Training input at scale: a global record index, each process materialises its rows. ---

INPUT_POSITION = "input_position"  # checkpoint meta key of `TrainInput.position()`
INPUT_FORMAT = "record_index_v1"  # the `input_position` format saved in checkpoint meta
_BLOCK = 1024  # mixture draws generated per (row, block)
_TAG = "_row_record"


def convert_examples(
    examples: Sequence[Mapping[str, np.ndarray]], lengths: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """`seqio.EncDecFeatureConverter(pack=False)` on a list of examples, as one numpy batch.

    Each `inputs` / `targets` is cut or zero-padded to `lengths`; `decoder_input_tokens` are the
    padded targets shifted right with 0 first; `decoder_loss_weights` mark non-padding targets.
    A `task_ids` scalar passes through as `[B]`.

    Returns:
      `encoder_input_tokens [B, T]`, `decoder_input_tokens [B, S]`, `decoder_target_tokens
      [B, S]`, `decoder_loss_weights [B, S]` (int32), and `task_ids [B]` when present.
    """

    def pad(tokens: np.ndarray, length: int) -> np.ndarray:
        out = np.zeros(length, np.int32)
        tokens = np.asarray(tokens, np.int32)[:length]
        out[: len(tokens)] = tokens
        return out

    inputs = np.stack([pad(ex["inputs"], lengths["inputs"]) for ex in examples])  # [B, T]
    targets = np.stack([pad(ex["targets"], lengths["targets"]) for ex in examples])  # [B, S]
    shifted = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)  # [B, S]
    batch = {
        "encoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": shifted,
        "decoder_loss_weights": (targets != 0).astype(np.int32),
    }
    if examples and TASK_IDS in examples[0]:
        batch[TASK_IDS] = np.asarray([int(ex[TASK_IDS]) for ex in examples], np.int32)
    return batch


def _sequential_options() -> tf.data.Options:
    """tf.data options under which a pipeline pulls its input only on demand (no read-ahead)."""
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    options.experimental_optimization.map_parallelization = False
    return options


def _requests(rows: weakref.ref) -> Iterator[tuple[np.ndarray, Any]]:
    """A `_TaskRows`'s requests, holding it weakly: tf.data keeps its generator alive in a
    registry until the iterator goes, and a strong reference would keep both alive forever."""
    while (task_rows := rows()) is not None:
        request = task_rows.next_request()
        del task_rows
        yield request


class _TaskRows:
    """One task's records for some rows of the global batch, preprocessed one record at a time.

    The task's raw `split` is read once, in source order (`shuffle=False`), into memory: record
    `i` is `records[i]`. Row `r`'s `j`-th record is the one at global position `g = j * B + r` of
    the task's record order, where epoch `g // N` is a seeded permutation of the N records (a
    full-epoch shuffle instead of seqio's buffer). Only requested records are preprocessed (the
    task's seqio preprocessors, on a one-record dataset inside a `flat_map`), so a record that a
    preprocessor drops makes its row take its next record, and a record that yields several
    examples feeds its row several times. A row's position is `(j, q)`: the next example is the
    `q`-th one of its `j`-th record.
    """

    def __init__(self, task: seqio.Task, split: str, lengths, seed: int, global_batch: int, keys):
        self.name = task.name
        source = task.source.get_dataset(split=split, shuffle=False)
        self.records = list(source.as_numpy_iterator())
        if not self.records:
            raise ValueError(f"Task {task.name!r} has no examples in split {split!r}.")
        self.seed, self.global_batch = seed, global_batch
        self.preprocessed = 0  # records preprocessed by this process (the work counted by tests)
        self._orders: dict[int, np.ndarray] = {}
        self._wanted = 0  # the row whose next record the pipeline reads next
        self._next: dict[int, int] = {}  # row -> next record to request
        self._made: dict[int, tuple[int, int]] = {}  # row -> (j, q) of the last example made
        self._consumed: dict[int, tuple[int, int]] = {}  # row -> (j, q) of its next example
        self._drop: dict[int, tuple[int, int]] = {}  # row -> (j, q): drop record j's first q
        self.pending: dict[int, list] = {}
        requests = tf.data.Dataset.from_generator(
            functools.partial(_requests, weakref.ref(self)),
            output_signature=(tf.TensorSpec([2], tf.int32), source.element_spec),
        )

        def one_record(tag, record):
            dataset = tf.data.Dataset.from_tensors(record)
            dataset = task.preprocess_precache(dataset, seed=seed)
            dataset = task.preprocess_postcache(dataset, sequence_length=lengths, seed=seed)
            return dataset.map(
                lambda ex: {
                    **{k: v for k, v in ex.items() if keys is None or k in keys},
                    _TAG: tag,
                }  # fmt: skip
            )

        pipeline = requests.flat_map(one_record).with_options(_sequential_options())
        self._iterator = pipeline.as_numpy_iterator()

    def start(self, row: int, position: Sequence[int]) -> None:
        """Places `row` at `position` = (j, q) (see the class docstring)."""
        j, q = (int(v) for v in position)
        self._next[row], self._drop[row] = j, (j, q)
        self._made[row], self._consumed[row] = (j, -1), (j, q)
        self.pending[row] = []

    def position(self, row: int) -> tuple[int, int]:
        """`row`'s (j, q): its next example is the `q`-th of its `j`-th record."""
        return self._consumed[row]

    def record_index(self, row: int, j: int) -> int:
        """The task record that row `row` reads as its `j`-th."""
        position = j * self.global_batch + row
        epoch, offset = divmod(position, len(self.records))
        if epoch not in self._orders:
            self._orders = {epoch: self._order(epoch)}  # one epoch at a time in memory
        return int(self._orders[epoch][offset])

    def _order(self, epoch: int) -> np.ndarray:
        key = zlib.crc32(self.name.encode())
        return np.random.default_rng([self.seed, key, epoch]).permutation(len(self.records))

    def next_request(self) -> tuple[np.ndarray, Any]:
        """The (row, j) tag and raw record that the wanted row reads next."""
        row = self._wanted
        j = self._next[row]
        self._next[row] = j + 1
        self.preprocessed += 1
        return np.asarray([row, j], np.int32), self.records[self.record_index(row, j)]

    def take(self, row: int) -> dict[str, np.ndarray]:
        """`row`'s next preprocessed example."""
        while not self.pending[row]:
            self._wanted = row
            example = next(self._iterator)
            tagged_row, j = (int(v) for v in example.pop(_TAG))
            made_j, made_q = self._made[tagged_row]
            q = made_q + 1 if made_j == j else 0
            self._made[tagged_row] = (j, q)
            drop_j, drop_q = self._drop.get(tagged_row, (-1, 0))
            if j == drop_j and q < drop_q:
                continue  # made before the checkpoint and already consumed
            self.pending[tagged_row].append((j, q, example))
        j, q, example = self.pending[row].pop(0)
        self._consumed[row] = (j, q + 1)
        return example


class TrainInput:
    """This process's rows of the global training batches; resumes without replaying batches.

    Row `r` of every global batch of `batch_size` rows comes from its own stream of records
    (`_TaskRows`), and for a mixture, row `r`'s `k`-th example comes from a task drawn at the
    mixture's rates with a generator seeded by (seed, r, k // 1024). Every row is a function of
    (task, lengths, batch size, seed) alone, so the global batches are the same for any number of
    processes, and each process reads and preprocesses only rows `start:stop`. `position()` is
    what a checkpoint saves: per row and task, (j, q); starting from it costs the rows' current
    records only, whatever the step (see docs/DESIGN.md "Scale-out").

    Args:
      mixture_or_task_name: registered seqio task or mixture (MIXTURE_OR_TASK_NAME).
      task_feature_lengths: e.g. {"inputs": 256, "targets": 16} (TASK_FEATURE_LENGTHS).
      batch_size: the GLOBAL batch size B (BATCH_SIZE).
      seed: the run's seed (RANDOM_SEED); None counts as 0.
      rows: this process's rows (start, stop) of every global batch (`distributed.DataLayout`).
      position: a saved `position()` to resume from; None starts at the first batch.
      split: the split read ("train").

    Raises:
      ValueError: unknown task, missing feature lengths, or a `position` of another task list
        or batch size.
    """

    def __init__(
        self,
        mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        batch_size: int,
        seed: int | None,
        rows: tuple[int, int],
        position: Mapping[str, Any] | None = None,
        split: str = "train",
    ):
        provider = get_task_or_mixture(mixture_or_task_name)
        self.lengths = _checked_lengths(task_feature_lengths)
        self.rows = range(*rows)
        self.batch_size = batch_size
        seed = int(seed or 0)
        if isinstance(provider, seqio.Mixture):
            tasks = [task for task in provider.tasks if split in task.splits]
            if not tasks:
                raise ValueError(f"No task of mixture {provider.name!r} has a {split!r} split.")
            rates = np.asarray([provider.get_rate(task) for task in tasks], np.float64)
            keys = set(provider.output_features)
        else:
            tasks, rates, keys = [provider], np.ones(1), None
        self.tasks = [_TaskRows(t, split, self.lengths, seed, batch_size, keys) for t in tasks]
        self._cumulative = np.cumsum(rates) / rates.sum()
        self._seed, self._draws = seed, {}
        names = [task.name for task in self.tasks]
        saved = _checked_position(position, names, batch_size, self.rows)
        for index, task in enumerate(self.tasks):
            for row in self.rows:
                task.start(row, saved["rows"][row][index] if saved else (0, 0))
        self.batches = saved["batches"] if saved else 0

    def __iter__(self) -> TrainInput:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """The next batch's rows `start:stop` (see `convert_examples` for the features)."""
        examples = [self.tasks[self._choose(row, self.batches)].take(row) for row in self.rows]
        self.batches += 1
        return convert_examples(examples, self.lengths)

    @property
    def preprocessed(self) -> int:
        """Records this process has preprocessed so far (all tasks)."""
        return sum(task.preprocessed for task in self.tasks)

    def _choose(self, row: int, k: int) -> int:
        """The task of row `row`'s `k`-th example (always 0 for a single task)."""
        if len(self.tasks) == 1:
            return 0
        block, offset = divmod(k, _BLOCK)
        if self._draws.get(row, (None,))[0] != block:
            draws = np.random.default_rng([self._seed, row, block]).random(_BLOCK)
            self._draws[row] = (block, np.searchsorted(self._cumulative, draws, side="right"))
        return int(min(self._draws[row][1][offset], len(self.tasks) - 1))

    def local_position(self) -> dict[str, Any]:
        """`position()` with this process's rows filled in and the others -1."""
        rows = np.full((self.batch_size, len(self.tasks), 2), -1, np.int64)
        for index, task in enumerate(self.tasks):
            for row in self.rows:
                rows[row, index] = task.position(row)
        return {
            "format": INPUT_FORMAT,
            "batches": self.batches,
            "tasks": [task.name for task in self.tasks],
            "rows": rows.tolist(),
        }

    def position(self) -> dict[str, Any]:
        """Every row's position (JSON), gathered from all processes (call it on all of them).

        Returns:
          {"format", "batches": batches consumed, "tasks": names, "rows": [B][tasks][2] (j, q)}.
        """
        local = self.local_position()
        import jax  # noqa: PLC0415 (only when saving)

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            rows = multihost_utils.process_allgather(np.asarray(local["rows"], np.int64))
            local["rows"] = np.asarray(rows).max(axis=0).tolist()  # each row from its process
        return local


def _checked_lengths(task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    missing = [k for k in ("inputs", "targets") if k not in task_feature_lengths]
    if missing:
        raise ValueError(
            f"TASK_FEATURE_LENGTHS {dict(task_feature_lengths)} lacks {missing}; "
            "give e.g. {'inputs': 256, 'targets': 16}."
        )
    return {k: v for k, v in task_feature_lengths.items() if k in ("inputs", "targets")}


def _checked_position(
    position: Mapping[str, Any] | None, names: list[str], batch_size: int, rows: range
) -> Mapping[str, Any] | None:
    """`position` after checking that it belongs to this input and holds `rows` (None passes)."""
    if position is None:
        return None
    shape = np.shape(position.get("rows"))
    if (
        position.get("format") != INPUT_FORMAT
        or list(position.get("tasks", [])) != names
        or shape != (batch_size, len(names), 2)
        or np.min(np.asarray(position["rows"])[rows.start : rows.stop]) < 0
    ):
        raise ValueError(
            f"The checkpoint's input position (format {position.get('format')!r}, tasks "
            f"{position.get('tasks')}, rows of shape {shape}) does not fit this run's input "
            f"(format {INPUT_FORMAT!r}, tasks {names}, {batch_size} rows): the task or mixture "
            "changed since it was saved. Use the same MIXTURE_OR_TASK_NAME and BATCH_SIZE, or "
            "a new MODEL_DIR."
        )
    return position


def train_batches(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    seed: int | None,
    rows: tuple[int, int],
    saved_meta: Mapping[str, Any] | None = None,
    consumed: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """The trainer's batches (rows `start:stop` of each global batch) from where a run stopped.

    A new run (`saved_meta` None), or one resumed from a checkpoint whose meta holds an
    `input_position`, reads only its rows and starts at that position (`TrainInput`). A
    checkpoint saved before input positions existed resumes as it was written: the global seqio
    stream, these rows of it, and the `consumed` batches skipped (that run stays on this input to
    its end, and its checkpoints hold no `input_position`).

    Args:
      mixture_or_task_name: MIXTURE_OR_TASK_NAME.
      task_feature_lengths: TASK_FEATURE_LENGTHS.
      batch_size: the global BATCH_SIZE.
      seed: the run's seed.
      rows: this process's rows (start, stop) of each global batch.
      saved_meta: the meta of the checkpoint resumed from; None for a new run.
      consumed: batches the resumed run consumed (read by the old-checkpoint path only).

    Returns:
      An iterator of numpy batches of `stop - start` rows (the features of `get_dataset`).
    """
    position = None if saved_meta is None else saved_meta.get(INPUT_POSITION)
    if saved_meta is None or position is not None:
        return TrainInput(
            mixture_or_task_name, task_feature_lengths, batch_size, seed, rows, position
        )
    dataset = get_dataset(
        mixture_or_task_name, task_feature_lengths, "train", batch_size, True, seed
    )
    dataset = skip_batches(replica_rows(dataset, *rows), consumed)
    return dataset.as_numpy_iterator()
