"""Batches from seqio: converted features, task_ids pass-through, seeded order, unknown tasks."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.train import data

TASK = "train_data_test_task"


def _examples(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    words = [f"w{i}" for i in range(24)]
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": words, "targets": ["yes", "no"] * 12, "task_ids": np.arange(24) % 3}
    )


if TASK not in seqio.TaskRegistry.names():
    vocabulary = seqio.ByteVocabulary()
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(_examples, splits=["train", "validation"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            "inputs": seqio.Feature(vocabulary),
            "targets": seqio.Feature(vocabulary),
        },
    )


def _batches(n, skip=0, **kwargs):
    dataset = data.get_dataset(TASK, {"inputs": 8, "targets": 4}, "train", 4, True, 5, **kwargs)
    return list(data.skip_batches(dataset, skip).take(n).as_numpy_iterator())


def test_features_shapes_and_task_ids():
    (batch,) = _batches(1)
    assert batch["encoder_input_tokens"].shape == (4, 8)
    assert batch["decoder_target_tokens"].shape == (4, 4)
    assert batch["task_ids"].shape == (4,) and batch["task_ids"].dtype == np.int32
    # Each example's task id is its word's index mod 3 ("w12" -> bytes "w", "1", "2").
    for tokens, task_id in zip(batch["encoder_input_tokens"], batch["task_ids"]):
        text = bytes(int(t) - 3 for t in tokens if t > 1).decode()
        assert int(text[1:]) % 3 == task_id
    # Decoder inputs are the targets shifted right with 0 as the start token.
    np.testing.assert_array_equal(
        batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1]
    )
    assert batch["decoder_input_tokens"][:, 0].tolist() == [0, 0, 0, 0]


def test_skipping_batches_resumes_the_same_order():
    straight = _batches(9)  # more than one epoch (24 examples = 6 batches)
    resumed = _batches(4, skip=5)
    for a, b in zip(straight[5:], resumed):
        np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
    in_order = data.get_dataset(TASK, {"inputs": 8, "targets": 4}, "train", 4, False, 5)
    unshuffled = next(in_order.as_numpy_iterator())["encoder_input_tokens"]
    assert not np.array_equal(straight[0]["encoder_input_tokens"], unshuffled)  # seeded shuffle


def test_host_shards_are_disjoint():
    first = _batches(3, num_epochs=1, shard_id=0, num_shards=2)
    second = _batches(3, num_epochs=1, shard_id=1, num_shards=2)
    rows = lambda bs: {tuple(r) for b in bs for r in b["encoder_input_tokens"]}  # noqa: E731
    assert len(rows(first)) == 12 and not rows(first) & rows(second)


def test_unknown_task_lists_close_names():
    with pytest.raises(ValueError, match="train_data_test_tsk.*Close names: train_data_test_task"):
        data.get_dataset("train_data_test_tsk", {"inputs": 8, "targets": 4}, "train", 4, True, 0)
    with pytest.raises(ModuleNotFoundError, match="MIXTURE_OR_TASK_MODULE 'no_such_tasks'"):
        data.import_task_modules("no_such_tasks")
