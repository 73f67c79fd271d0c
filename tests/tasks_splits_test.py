"""Tests of the few-shot and dev/test split protocols and of the derived tasks."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks.builtin as builtin
from tasks import splits
from tasks.labels import label_strings

LENGTHS = {"inputs": 128, "targets": 16}


def test_few_shot_plan_is_seeded_disjoint_and_nested():
    plan = splits.few_shot_plan(5000, k=16, seed=3)
    again = splits.few_shot_plan(5000, k=16, seed=3)
    train, dev = plan["train"][1], plan["validation"][1]
    assert plan["train"][0] == plan["validation"][0] == "train"
    assert plan["test"] == ("validation", None)
    np.testing.assert_array_equal(train, again["train"][1])
    np.testing.assert_array_equal(dev, again["validation"][1])
    assert len(train) == 16 and len(set(train)) == 16
    assert len(dev) == splits.FEW_SHOT_DEV_SIZE
    assert not set(train) & set(dev)
    assert set(splits.few_shot_plan(5000, k=8, seed=3)["train"][1]) <= set(train)
    assert set(splits.few_shot_plan(5000, k=16, seed=4)["train"][1]) != set(train)
    # Dev shrinks when the train split is small; k larger than the split is an error.
    small = splits.few_shot_plan(40, k=32, seed=0)
    assert len(small["validation"][1]) == 8
    assert set(small["train"][1]) | set(small["validation"][1]) == set(range(40))
    with pytest.raises(ValueError, match="k=41"):
        splits.few_shot_plan(40, k=41, seed=0)


def test_few_shot_draw_is_not_label_balanced():
    # Uniform draws over a 90/10 labelled pool: K=100 subsets keep roughly the pool's ratio.
    labels = np.array([0] * 9000 + [1] * 1000)
    fractions = [
        labels[splits.few_shot_plan(10000, k=100, seed=s)["train"][1]].mean() for s in range(20)
    ]
    assert 0.05 < np.mean(fractions) < 0.15


def test_dev_split_plan_small_dataset_halves_validation():
    plan = splits.dev_split_plan(num_train=2490, num_validation=277, seed=0)
    assert plan["train"] == ("train", None)
    dev, test = plan["validation"], plan["test"]
    assert dev[0] == test[0] == "validation"
    assert len(dev[1]) == 138 and len(test[1]) == 139
    assert not set(dev[1]) & set(test[1])
    assert set(dev[1]) | set(test[1]) == set(range(277))
    again = splits.dev_split_plan(num_train=2490, num_validation=277, seed=0)
    np.testing.assert_array_equal(dev[1], again["validation"][1])


def test_dev_split_plan_large_dataset_holds_out_1000_train_examples():
    plan = splits.dev_split_plan(num_train=10000, num_validation=500, seed=1)
    train, dev = plan["train"][1], plan["validation"][1]
    assert plan["train"][0] == plan["validation"][0] == "train"
    assert plan["test"] == ("validation", None)
    assert len(dev) == 1000 and len(train) == 9000
    assert not set(train) & set(dev)
    assert set(train) | set(dev) == set(range(10000))


def test_select_indices_keeps_positions_in_order():
    ds = tf.data.Dataset.range(100, 200)
    picked = list(splits.select_indices(ds, np.array([3, 0, 57])).as_numpy_iterator())
    assert picked == [100, 103, 157]


def _texts(name, split):
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
    return [ex["inputs_pretokenized"].decode() for ex in ds.as_numpy_iterator()]


def test_registered_few_shot_task_uses_the_planned_examples():
    name = "builtin_sentiment_fewshot_k16_seed0"
    assert label_strings(name) == label_strings("builtin_sentiment")
    inputs, _ = builtin.generate_examples("sentiment", "train")
    plan = splits.few_shot_plan(len(inputs), k=16, seed=0)
    assert _texts(name, "train") == [inputs[i] for i in plan["train"][1]]
    dev = _texts(name, "validation")
    assert len(dev) == 1000 and not set(dev) & set(_texts(name, "train"))
    assert _texts(name, "test") == list(builtin.generate_examples("sentiment", "validation")[0])
    # Shuffling reorders but never changes the subset.
    task = seqio.get_mixture_or_task(name)
    shuffled = task.get_dataset(
        LENGTHS, split="train", shuffle=True, seed=5, try_in_mem_cache=False
    )
    assert sorted(
        e["inputs_pretokenized"].decode() for e in shuffled.as_numpy_iterator()
    ) == sorted(_texts(name, "train"))


def test_registered_dev_split_task_sizes():
    task = seqio.get_mixture_or_task("builtin_topic_devsplit_seed0")
    assert task.num_input_examples("train") == 19000
    assert task.num_input_examples("validation") == 1000
    assert task.num_input_examples("test") == 500


def test_few_shot_on_mocked_tfds_counts_the_split():
    import tasks.qa  # noqa: F401  (registers taskless_squad_v010_allanswers)

    name = splits.register_few_shot_task("taskless_squad_v010_allanswers", k=8, seed=0, dev_size=5)
    task = seqio.get_mixture_or_task(name)
    with tfds.testing.mock_data(num_examples=20):
        train = task.get_dataset(LENGTHS, split="train", shuffle=False, try_in_mem_cache=False)
        dev = task.get_dataset(LENGTHS, split="validation", shuffle=False, try_in_mem_cache=False)
        train_ids = [ex["id"] for ex in train.as_numpy_iterator()]
        dev_ids = [ex["id"] for ex in dev.as_numpy_iterator()]
    assert len(train_ids) == 8 and len(dev_ids) == 5
    assert not set(train_ids) & set(dev_ids)


def test_derive_task_of_unknown_base_names_it():
    with pytest.raises(ValueError, match="no_such_task"):
        splits.register_few_shot_task("no_such_task", k=8, seed=0)
