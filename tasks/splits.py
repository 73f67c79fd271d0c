"""Few-shot subsets and the structured-prompt dev/test split protocol, as derived seqio tasks.

Two protocols, both seeded and deterministic (the same seed gives the same examples whatever the
shuffling, because subsets are chosen by position in the base split read in its fixed order):

- Few-shot (DPT, IDPG): `train` is K examples drawn uniformly from the base `train` split without
  label balancing; `validation` is up to `FEW_SHOT_DEV_SIZE` (1,000, as in IDPG) other `train`
  examples; `test` is the whole base `validation` split (GLUE/SuperGLUE test labels are hidden).
  With one seed, the K=8 subset is contained in the K=16 subset, and so on.
- Dev/test split (structured prompt tuning, Sec. 4.1): when the base `train` split has fewer than
  10,000 examples, `train` is all of it and the base `validation` split is halved at random into
  `validation` (dev) and `test`; otherwise 1,000 random `train` examples are held out as
  `validation` (dev), `train` is the rest and `test` is the base `validation` split.

The derived tasks (`<base>_fewshot_k<K>_seed<S>`, `<base>_devsplit_seed<S>`) reuse the base task's
preprocessors, output features, postprocessor, metrics and label strings; only the data source is
wrapped in a `SubsetDataSource`. The base task must be registered first.
"""

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks.labels import label_strings, register_labels

FEW_SHOT_DEV_SIZE = 1_000
SMALL_DATASET_LIMIT = 10_000
HELD_OUT_DEV_SIZE = 1_000
# Few-shot sizes of DPT (8, 16, 32 on SuperGLUE) and IDPG (100, 500, 1000), and the seeds used.
FEW_SHOT_KS = (8, 16, 32, 100, 500, 1000)
FEW_SHOT_SEEDS = (0, 1, 2)

# A split plan maps each derived split to (base split, sorted indices into the base split).
SplitPlan = Mapping[str, tuple[str, np.ndarray | None]]


def few_shot_plan(
    num_train: int, k: int, seed: int, dev_size: int = FEW_SHOT_DEV_SIZE
) -> SplitPlan:
    """The few-shot split plan: K train examples, a disjoint dev set, base validation as test.

    Args:
      num_train: number of examples in the base `train` split.
      k: number of training examples to keep.
      seed: numpy seed of the draw.
      dev_size: largest dev set, taken from the `train` examples not drawn for training (fewer
        when the base `train` split has fewer than `k + dev_size` examples).

    Returns:
      A split plan `{split: (base_split, indices)}` with `indices=None` for a whole base split.

    Raises:
      ValueError: `k` is not positive or larger than the base `train` split.
    """
    if not 0 < k <= num_train:
        raise ValueError(
            f"Cannot draw k={k} few-shot examples from a train split of {num_train}: "
            "choose 0 < k <= the number of training examples."
        )
    order = np.random.default_rng(seed).permutation(num_train)
    dev = order[k : k + min(dev_size, num_train - k)]
    return {
        "train": ("train", np.sort(order[:k])),
        "validation": ("train", np.sort(dev)),
        "test": ("validation", None),
    }


def dev_split_plan(num_train: int, num_validation: int, seed: int) -> SplitPlan:
    """The structured-prompt split plan (dev/test from validation, or dev held out of train).

    Args:
      num_train: number of examples in the base `train` split.
      num_validation: number of examples in the base `validation` split.
      seed: numpy seed of the draw.

    Returns:
      A split plan `{split: (base_split, indices)}` with `indices=None` for a whole base split.
    """
    rng = np.random.default_rng(seed)
    if num_train < SMALL_DATASET_LIMIT:
        order = rng.permutation(num_validation)
        half = num_validation // 2
        return {
            "train": ("train", None),
            "validation": ("validation", np.sort(order[:half])),
            "test": ("validation", np.sort(order[half:])),
        }
    order = rng.permutation(num_train)
    return {
        "train": ("train", np.sort(order[HELD_OUT_DEV_SIZE:])),
        "validation": ("train", np.sort(order[:HELD_OUT_DEV_SIZE])),
        "test": ("validation", None),
    }


def count_examples(source: seqio.DataSource, split: str) -> int:
    """Number of examples in a split: the source's metadata, else one pass over the data."""
    try:
        known = source.num_input_examples(split)
    except KeyError:  # TFDS datasets whose split metadata is absent (e.g. mocked data).
        known = None
    if known is not None:
        return int(known)
    dataset = source.get_dataset(split=split, shuffle=False)
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1).numpy())


def select_indices(dataset: tf.data.Dataset, indices: np.ndarray) -> tf.data.Dataset:
    """Keeps the examples of `dataset` at the given positions (order preserved).

    Args:
      dataset: a dataset read in a fixed order.
      indices: positions to keep, each in `[0, len(dataset))`.

    Returns:
      The selected examples.
    """
    indices = np.asarray(indices, dtype=np.int64)
    size = int(indices.max()) + 1 if indices.size else 1
    keep = np.zeros([size], dtype=bool)
    keep[indices] = True
    keep_tf = tf.constant(keep)
    selected = dataset.take(size).enumerate()
    selected = selected.filter(lambda i, _: tf.gather(keep_tf, i))
    return selected.map(lambda _, example: example)


class SubsetDataSource(seqio.DataSource):
    """A data source whose splits are seeded index subsets of another source's splits.

    The plan is computed on first use (it may need to count the base split once).
    """

    def __init__(
        self,
        base: seqio.DataSource,
        make_plan: Callable[[Callable[[str], int]], SplitPlan],
        splits: Sequence[str] = ("train", "validation", "test"),
    ):
        """Initialises the source.

        Args:
          base: the source to take subsets of; its splits are read unshuffled.
          make_plan: called with a function `split -> number of examples` of the base source;
            returns the split plan `{split: (base_split, indices or None)}`.
          splits: the derived split names (keys of the plan).
        """
        super().__init__(splits=tuple(splits), num_input_examples=None)
        self._base = base
        self._make_plan = make_plan

    @functools.cached_property
    def plan(self) -> SplitPlan:
        """The split plan (computed once)."""
        return self._make_plan(functools.cache(functools.partial(count_examples, self._base)))

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def num_input_examples(self, split: str) -> int | None:
        base_split, indices = self.plan[split]
        return count_examples(self._base, base_split) if indices is None else len(indices)

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        **unused_kwargs,
    ) -> tf.data.Dataset:
        """The examples of a derived split, in base order (seqio shuffles after preprocessing)."""
        del shuffle, seed, unused_kwargs
        if split not in self.plan:
            raise ValueError(f"Unknown split {split!r}: this source has {sorted(self.plan)}.")
        base_split, indices = self.plan[split]
        dataset = self._base.get_dataset(split=base_split, shuffle=False)
        if indices is not None:
            dataset = select_indices(dataset, indices)
        if shard_info is not None and shard_info.num_shards > 1:
            dataset = dataset.shard(shard_info.num_shards, shard_info.index)
        return dataset


def derive_task(
    name: str,
    base_name: str,
    wrap_source: Callable[[seqio.DataSource], seqio.DataSource] | None = None,
    extra_preprocessors: Sequence[Callable[..., tf.data.Dataset]] = (),
    extra_features: Mapping[str, seqio.Feature] | None = None,
) -> seqio.Task:
    """Registers a copy of a registered task with another source and/or extra steps.

    Args:
      name: the new task's name.
      base_name: a registered task.
      wrap_source: makes the new data source from the base task's (default: keep it).
      extra_preprocessors: steps run after the base task's preprocessors.
      extra_features: output features added to the base task's.

    Returns:
      The registered task (also registered with the base task's label strings).

    Raises:
      ValueError: `base_name` is not a registered task.
    """
    if base_name not in seqio.TaskRegistry.names():
        raise ValueError(
            f"Cannot derive {name!r}: no task named {base_name!r} is registered. Import the module "
            "that registers it first."
        )
    base = seqio.TaskRegistry.get(base_name)
    task = base.replace(
        name=name,
        source=wrap_source(base.source) if wrap_source else base.source,
        preprocessors=[*base.preprocessors, *extra_preprocessors],
        output_features={**base.output_features, **(extra_features or {})},
    )
    seqio.TaskRegistry.add_provider(name, task)
    register_labels(name, label_strings(base_name))
    return task


def register_few_shot_task(
    base_name: str, k: int, seed: int, dev_size: int = FEW_SHOT_DEV_SIZE
) -> str:
    """Registers `<base_name>_fewshot_k<k>_seed<seed>` (see the module docstring); returns it."""
    name = f"{base_name}_fewshot_k{k}_seed{seed}"
    make_plan = lambda sizes: few_shot_plan(sizes("train"), k, seed, dev_size)
    derive_task(name, base_name, wrap_source=lambda source: SubsetDataSource(source, make_plan))
    return name


def register_dev_split_task(base_name: str, seed: int = 0) -> str:
    """Registers `<base_name>_devsplit_seed<seed>` (see the module docstring); returns it."""
    name = f"{base_name}_devsplit_seed{seed}"
    make_plan = lambda sizes: dev_split_plan(sizes("train"), sizes("validation"), seed)
    derive_task(name, base_name, wrap_source=lambda source: SubsetDataSource(source, make_plan))
    return name


def register_variants_of_registered(
    task_names: Sequence[str], ks: Sequence[int], seeds: Sequence[int]
) -> list[str]:
    """Registers few-shot and dev-split variants of those `task_names` already registered.

    Args:
      task_names: base task names; unregistered ones (and variants already registered) are skipped.
      ks: few-shot sizes K.
      seeds: seeds of the few-shot draws; the first is also the dev-split seed.

    Returns:
      The names registered.
    """
    registered = []
    for base in task_names:
        if base not in seqio.TaskRegistry.names():
            continue
        wanted = [(k, seed) for seed in seeds for k in ks]
        for k, seed in wanted:
            if f"{base}_fewshot_k{k}_seed{seed}" not in seqio.TaskRegistry.names():
                registered.append(register_few_shot_task(base, k=k, seed=seed))
        if f"{base}_devsplit_seed{seeds[0]}" not in seqio.TaskRegistry.names():
            registered.append(register_dev_split_task(base, seed=seeds[0]))
    return registered
