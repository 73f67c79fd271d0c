"""`data.TrainInput`: each process's rows of process-count-independent batches, resumed in O(1).

The work is counted by a preprocessor that counts the records it sees (a `tf.py_function`), not
by `TrainInput`'s own counter and not by timing.
"""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.train import data

LENGTHS = {"inputs": 8, "targets": 4}
SEEN = collections.Counter()  # task name -> records its preprocessor saw
VOCABULARY = seqio.ByteVocabulary()
FEATURES = {"inputs": seqio.Feature(VOCABULARY), "targets": seqio.Feature(VOCABULARY)}


def _words(n):
    def examples(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": [f"w{i}" for i in range(n)], "index": np.arange(n), "targets": ["t"] * n}
        )

    return examples


def _counted(name):
    def count(dataset):
        def seen(index):
            SEEN[name] += 1
            return index

        return dataset.map(
            lambda ex: {**ex, "index": tf.py_function(seen, [ex["index"]], tf.int64)}
        )

    return count


def _drop_and_double(dataset):
    """Drops records whose index % 5 == 1 and yields records whose index % 7 == 3 twice."""
    dataset = dataset.filter(lambda ex: ex["index"] % 5 != 1)
    return dataset.flat_map(
        lambda ex: tf.data.Dataset.from_tensors(ex).repeat(
            tf.where(ex["index"] % 7 == 3, tf.constant(2, tf.int64), 1)
        )
    )


def _register(name, n, extra=()):
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(_words(n), splits=["train"]),
            preprocessors=[_counted(name), *extra, seqio.preprocessors.tokenize],
            output_features=FEATURES,
        )
    return name


PLAIN = _register("data_input_test_plain", 20)
UNEVEN = _register("data_input_test_uneven", 30, [_drop_and_double])
OTHER = _register("data_input_test_other", 9)
if "data_input_test_mixture" not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add("data_input_test_mixture", [(PLAIN, 3.0), (OTHER, 1.0)])
MIXTURE = "data_input_test_mixture"


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("name", [PLAIN, UNEVEN, MIXTURE])
def test_global_batches_are_the_same_for_1_2_and_4_processes(name):
    whole = _take(data.TrainInput(name, LENGTHS, 8, 3, (0, 8)), 9)  # > 3 epochs of PLAIN
    for processes in (2, 4):
        rows = 8 // processes
        parts = [
            data.TrainInput(name, LENGTHS, 8, 3, (i * rows, (i + 1) * rows))
            for i in range(processes)
        ]
        joined = [
            {k: np.concatenate([b[k] for b in batches]) for k in whole[0]}
            for batches in zip(*(_take(p, 9) for p in parts))
        ]
        _assert_same(joined, whole)
    other = _take(data.TrainInput(name, LENGTHS, 8, 4, (0, 8)), 9)
    assert any(
        (a["encoder_input_tokens"] != b["encoder_input_tokens"]).any() for a, b in zip(other, whole)
    )


def test_each_process_preprocesses_only_its_rows():
    for processes in (1, 2, 4):
        SEEN.clear()
        stream = data.TrainInput(PLAIN, LENGTHS, 8, 3, (0, 8 // processes))
        _take(stream, 10)
        assert SEEN[PLAIN] == 10 * 8 // processes == stream.preprocessed


def test_every_example_once_per_epoch_in_a_seeded_order():
    batches = _take(data.TrainInput(PLAIN, LENGTHS, 4, 3, (0, 4)), 10)  # 2 epochs of 20
    words = [
        bytes(t - 3 for t in row if t > 1) for b in batches for row in b["encoder_input_tokens"]
    ]
    expected = sorted(f"w{i}".encode() for i in range(20))
    assert sorted(words[:20]) == expected and sorted(words[20:]) == expected
    assert words[:20] != words[20:] and words[:20] != sorted(words[:20], key=lambda w: int(w[1:]))


@pytest.mark.parametrize("name", [PLAIN, UNEVEN, MIXTURE])
def test_resume_continues_the_uninterrupted_batches(name):
    straight = data.TrainInput(name, LENGTHS, 4, 3, (0, 4))
    want = _take(straight, 12)
    first = data.TrainInput(name, LENGTHS, 4, 3, (0, 4))
    _take(first, 5)
    position = first.position()
    assert position["batches"] == 5
    resumed = [data.TrainInput(name, LENGTHS, 4, 3, (i, i + 2), position) for i in (0, 2)]
    joined = [
        {k: np.concatenate([b[k] for b in pair]) for k in want[0]}
        for pair in zip(*(_take(r, 7) for r in resumed))
    ]
    _assert_same(joined, want[5:])


def test_resume_work_does_not_grow_with_the_step():
    work = {}
    for step in (5, 500):
        stream = data.TrainInput(PLAIN, LENGTHS, 2, 3, (0, 2))
        _take(stream, step)
        position = stream.position()
        want = next(stream)
        SEEN.clear()
        resumed = data.TrainInput(PLAIN, LENGTHS, 2, 3, (0, 2), position)
        _assert_same([next(resumed)], [want])
        work[step] = SEEN[PLAIN]
    assert work[5] == work[500] <= 2 * 2  # at most the rows' current records, twice
    # Before: the global stream replayed the consumed batches (every example preprocessed).
    SEEN.clear()
    dataset = data.get_dataset(PLAIN, LENGTHS, "train", 2, True, 3)
    next(data.skip_batches(dataset, 500).as_numpy_iterator())
    assert SEEN[PLAIN] >= 500 * 2


def test_mixture_follows_its_rates_and_uses_every_task():
    SEEN.clear()
    stream = data.TrainInput(MIXTURE, LENGTHS, 8, 3, (0, 8))
    _take(stream, 50)
    share = SEEN[PLAIN] / (SEEN[PLAIN] + SEEN[OTHER])
    assert SEEN[PLAIN] + SEEN[OTHER] == 400 and 0.7 < share < 0.8  # rates 3 : 1


def test_features_match_seqios_converter():
    examples = [
        {"inputs": np.arange(3, 14), "targets": np.array([5, 6, 1])},  # inputs cut to 8
        {"inputs": np.array([7, 1]), "targets": np.array([9, 8, 7, 6, 1])},  # targets cut to 4
    ]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={k: tf.TensorSpec([None], tf.int64) for k in ("inputs", "targets")},
    ).map(lambda ex: {k: tf.cast(v[: LENGTHS[k]], tf.int32) for k, v in ex.items()})
    # (the slice is seqio's `Task` trimming its output features; the converter only pads)
    converted = seqio.EncDecFeatureConverter(pack=False)(dataset, LENGTHS).batch(2)
    want = next(converted.as_numpy_iterator())
    got = data.convert_examples(examples, LENGTHS)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert got[key].dtype == want[key].dtype


def test_a_position_of_another_input_is_refused():
    stream = data.TrainInput(PLAIN, LENGTHS, 4, 3, (0, 4))
    next(stream)
    with pytest.raises(ValueError, match="MIXTURE_OR_TASK_NAME and BATCH_SIZE"):
        data.TrainInput(OTHER, LENGTHS, 4, 3, (0, 4), stream.position())
    with pytest.raises(ValueError, match="4 rows"):
        data.TrainInput(PLAIN, LENGTHS, 4, 3, (0, 4), {**stream.position(), "rows": [[[0, 0]]]})


def test_a_checkpoint_without_input_position_resumes_on_the_old_stream():
    old_meta = {"seed": 3, "task": PLAIN, "batch_size": 4, "step": 6, "data_position": 6}
    got = _take(data.train_batches(PLAIN, LENGTHS, 4, 3, (2, 4), old_meta, consumed=6), 2)
    dataset = data.get_dataset(PLAIN, LENGTHS, "train", 4, True, 3)
    want = [
        {k: v[2:4] for k, v in b.items()}
        for b in data.skip_batches(dataset, 6).take(2).as_numpy_iterator()
    ]
    _assert_same(got, want)
    new = data.train_batches(PLAIN, LENGTHS, 4, 3, (0, 4), dict(old_meta, input_position=None))
    assert not isinstance(new, data.TrainInput)  # None: still the old checkpoint's input
    assert isinstance(data.train_batches(PLAIN, LENGTHS, 4, 3, (0, 4)), data.TrainInput)
