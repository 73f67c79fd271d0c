"""Tests of the mixtures: lazy resolution, rates and the `task_ids` feature."""

import collections
import importlib
import importlib.util

import pytest
import seqio
import tensorflow as tf

# GLUE/SuperGLUE tasks first when their modules exist (they are another part of the project).
BENCHMARK_MODULES = [
    m for m in ("tasks.glue", "tasks.superglue") if importlib.util.find_spec(m) is not None
]
for _module in BENCHMARK_MODULES:
    importlib.import_module(_module)

import tasks.builtin as builtin  # noqa: E402
from tasks import mixtures, splits  # noqa: E402
from tasks.labels import label_strings  # noqa: E402

LENGTHS = {"inputs": 128, "targets": 16}


def test_multitask_mixture_gives_each_example_its_task_index():
    mixture = seqio.get_mixture_or_task("builtin_equal_with_task_ids")
    assert mixtures.MIXTURE_TASKS["builtin_equal_with_task_ids"] == mixtures.BUILTIN_TASKS
    ds = mixture.get_dataset(
        LENGTHS, split="train", shuffle=True, seed=0, num_epochs=1, try_in_mem_cache=False,
        copy_pretokenized=True,
    )  # fmt: skip
    spec = ds.element_spec["task_ids"]
    assert spec.dtype == tf.int32 and spec.shape.rank == 0
    label_to_task = {
        label: index
        for index, name in enumerate(mixtures.BUILTIN_TASKS)
        for label in label_strings(name)
    }
    counts = collections.Counter()
    for ex in ds.take(600).as_numpy_iterator():
        task_index = int(ex["task_ids"])
        assert label_to_task[ex["targets_pretokenized"].decode()] == task_index
        counts[task_index] += 1
    # Equal rates: each task about a third of the examples (binomial sd ~ 12).
    assert set(counts) == {0, 1, 2}
    assert all(150 < c < 250 for c in counts.values()), counts


def test_task_id_variant_alone_keeps_task_ids_and_labels():
    name = mixtures.register_task_id_variant("builtin_keyword_prefixed", 7)
    assert name == "builtin_keyword_prefixed_with_task_id_7"
    assert mixtures.register_task_id_variant("builtin_keyword_prefixed", 7) == name  # idempotent
    assert label_strings(name) == ("no", "yes")
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(LENGTHS, split="validation", shuffle=False, try_in_mem_cache=False)
    ex = next(ds.as_numpy_iterator())
    assert ex["task_ids"] == 7 and ex["inputs_pretokenized"].startswith(b"keyword: ")


def test_lazy_mixture_resolves_names_registered_after_it():
    mixtures.register_mixture("test_late_mixture", ["test_late_task"], 1.0)
    mixture = seqio.MixtureRegistry.get("test_late_mixture")
    with pytest.raises(ValueError, match="test_late_task"):
        mixture.tasks  # noqa: B018
    splits.derive_task("test_late_task", "builtin_topic")
    assert [t.name for t in mixture.tasks] == ["test_late_task"]
    assert mixture.name == "test_late_mixture"


def test_proportional_rate_is_num_examples_capped():
    name = mixtures.register_mixture(
        "test_builtin_proportional",
        ["builtin_sentiment", "builtin_sentiment_fewshot_k100_seed0"],
        mixtures.examples_proportional_rate,
    )
    mixture = seqio.get_mixture_or_task(name)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == {"builtin_sentiment": 20000.0, "builtin_sentiment_fewshot_k100_seed0": 100.0}
    with_ids = seqio.get_mixture_or_task(
        mixtures.register_multitask_mixture(
            "test_builtin_proportional_with_task_ids",
            ["builtin_sentiment", "builtin_sentiment_fewshot_k100_seed0"],
            mixtures.examples_proportional_rate,
        )
    )
    assert {t.name: with_ids.get_rate(t) for t in with_ids.tasks} == {
        "builtin_sentiment_with_task_id_0": 20000.0,
        "builtin_sentiment_fewshot_k100_seed0_with_task_id_1": 100.0,
    }
    task = seqio.get_mixture_or_task("builtin_sentiment")
    assert mixtures.examples_proportional_rate(task, maximum=5000) == 5000.0
    assert builtin.SPLIT_SIZES["train"] < mixtures.PROPORTIONAL_MAXIMUM


def test_add_task_ids_preprocessor():
    ds = tf.data.Dataset.from_tensor_slices({"inputs": [[1, 2], [3, 4]]})
    out = list(mixtures.add_task_ids(ds, task_index=3).as_numpy_iterator())
    assert [int(e["task_ids"]) for e in out] == [3, 3]
    assert out[1]["inputs"].tolist() == [3, 4]


def test_benchmark_mixtures_are_registered_with_t5_task_names():
    names = set(seqio.MixtureRegistry.names())
    for name in (
        "taskless_glue_v002_proportional",
        "taskless_glue_v002_equal",
        "taskless_glue_v002_equal_with_task_ids",
    ):
        assert name in names
    assert "taskless_glue_wnli_v002" not in mixtures.GLUE_TASKS
    assert len(mixtures.SUPER_GLUE_TASKS) == 8
    if "tasks.glue" in BENCHMARK_MODULES:
        mixture = seqio.get_mixture_or_task("taskless_glue_v002_equal_with_task_ids")
        expected = {mixtures.task_id_variant_name(t, i) for i, t in enumerate(mixtures.GLUE_TASKS)}
        assert {t.name for t in mixture.tasks} == expected
    if "tasks.superglue" in BENCHMARK_MODULES:
        mixture = seqio.get_mixture_or_task("taskless_super_glue_v102_equal")
        assert {t.name for t in mixture.tasks} == set(mixtures.SUPER_GLUE_TASKS)


def test_glue_multitask_mixture_builds_on_mocked_tfds():
    import tensorflow_datasets as tfds

    import tasks  # noqa: F401  (the GLUE registrations)

    name = "taskless_glue_v002_equal_with_task_ids"
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = seqio.get_mixture_or_task(name).get_dataset(
            {"inputs": 64, "targets": 8}, split="train", shuffle=True, seed=0,
            try_in_mem_cache=False,
        )  # fmt: skip
        task_ids = {int(ex["task_ids"]) for ex in ds.take(64).as_numpy_iterator()}
    # Every GLUE training task has examples here, each tagged with its index in the mixture.
    assert task_ids == set(range(len(mixtures.MIXTURE_TASKS[name])))
