"""GLUE tasks: every registration builds on TFDS mock data; golden strings; labels and metrics."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import glue, naming, preprocessors
from tasks.labels import label_strings

LENGTHS = {"inputs": 64, "targets": 8}
NUM_EXAMPLES = 3

# task name -> (split read in the test, T5's task word in the T5-format variant).
GLUE_TASKS = {
    "taskless_glue_cola_v002": ("validation", "cola"),
    "taskless_glue_sst2_v002": ("validation", "sst2"),
    "taskless_glue_mrpc_v002": ("validation", "mrpc"),
    "taskless_glue_qqp_v002": ("validation", "qqp"),
    "taskless_glue_stsb_v002": ("validation", "stsb"),
    "taskless_glue_mnli_v002": ("validation", "mnli"),
    "taskless_glue_mnli_matched_v002": ("validation", "mnli"),
    "taskless_glue_mnli_mismatched_v002": ("validation", "mnli"),
    "taskless_glue_qnli_v002": ("validation", "qnli"),
    "taskless_glue_rte_v002": ("validation", "rte"),
    "taskless_glue_wnli_v002": ("validation", "wnli"),
    "taskless_glue_ax_v002": ("test", "mnli"),
    "taskless_glue_mrpc_as_qqp_v002": ("validation", "mrpc"),
    "taskless_glue_qqp_as_mrpc_v002": ("validation", "qqp"),
}


def _t5format(name: str) -> str:
    """`taskless_<T5 name>` -> `<T5 name>_t5format` (`tasks.naming`)."""
    return naming.t5format(name.removeprefix(naming.TASKLESS_PREFIX))


def _examples(task_name: str, split: str) -> list[dict]:
    """The task's examples, through its whole pipeline (text cast, tokenization, EOS)."""
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
    return list(dataset.as_numpy_iterator())


def _texts(task_name: str, split: str) -> list[dict]:
    """The task's examples after its text cast only (cheaper than `_examples`)."""
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.source.get_dataset(split=split, shuffle=False)
    return list(task.preprocessors[0](dataset).as_numpy_iterator())


def test_every_glue_task_is_registered_in_both_formats():
    registered = set(seqio.TaskRegistry.names())
    assert registered >= set(GLUE_TASKS) | {_t5format(n) for n in GLUE_TASKS}


@pytest.mark.parametrize("name", sorted(GLUE_TASKS))
def test_glue_task_builds_on_mock_data_in_both_formats(name):
    split, prefix = GLUE_TASKS[name]
    labels = label_strings(name)
    assert label_strings(_t5format(name)) == labels
    preprocessors.reset_dropped_counts()
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        plain = _examples(name, split)
        assert len(plain) + sum(preprocessors.dropped_counts().values()) == NUM_EXAMPLES
        prefixed = _texts(_t5format(name), split)
    assert len(prefixed) == len(plain) > 0
    for ex, ex_prefixed in zip(plain, prefixed):
        text = ex["inputs_pretokenized"].decode()
        assert ex_prefixed["inputs"].decode() == f"{prefix} {text}"
        assert not text.startswith(prefix + " ")
        assert ex["targets_pretokenized"].decode() in labels
        assert ex["inputs"].dtype == np.int32 and ex["inputs"].size > 0
        assert ex["targets"][-1] == 1, "targets end with EOS"


def test_mnli_validation_is_matched_and_tfds_split_names_stay():
    source = seqio.get_mixture_or_task("taskless_glue_mnli_v002").source
    assert set(source.splits) == {
        "train", "validation", "test", "validation_matched", "validation_mismatched",
        "test_matched", "test_mismatched",
    }  # fmt: skip
    matched_source = seqio.get_mixture_or_task("taskless_glue_mnli_matched_v002").source
    assert matched_source.tfds_dataset.name == "glue/mnli_matched:1.0.0"
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        validation = _texts("taskless_glue_mnli_v002", "validation")
        matched = _texts("taskless_glue_mnli_v002", "validation_matched")
    assert [e["inputs"] for e in validation] == [e["inputs"] for e in matched]


def test_label_strings_are_tfds_label_classes():
    builder_configs = {c.name: c for c in tfds.builder_cls("glue").BUILDER_CONFIGS}
    for config, labels in [
        ("cola", glue.COLA_LABELS),
        ("sst2", glue.SST2_LABELS),
        ("mrpc", glue.MRPC_LABELS),
        ("qqp", glue.QQP_LABELS),
        ("mnli", glue.MNLI_LABELS),
        ("ax", glue.MNLI_LABELS),
        ("qnli", glue.QNLI_LABELS),
        ("rte", glue.RTE_LABELS),
        ("wnli", glue.WNLI_LABELS),
    ]:
        assert tuple(builder_configs[config].label_classes) == labels, config
    assert label_strings("taskless_glue_stsb_v002")[:3] == ("0.0", "0.2", "0.4")
    assert (
        len(label_strings("taskless_glue_stsb_v002")) == 26
        and label_strings("taskless_glue_stsb_v002")[-1] == "5.0"
    )


def test_sources_use_the_papers_tfds_version():
    supported = {str(v) for v in tfds.builder_cls("glue").BUILDER_CONFIGS[0].supported_versions}
    assert glue.GLUE_VERSION == "1.0.0" and glue.GLUE_VERSION in supported
    for name in GLUE_TASKS:
        tfds_name = seqio.get_mixture_or_task(name).source.tfds_dataset.name
        assert tfds_name.startswith("glue/") and tfds_name.endswith(":1.0.0"), tfds_name


def _first_preprocessor(task_name: str) -> functools.partial:
    return seqio.get_mixture_or_task(task_name).preprocessors[0]


@pytest.mark.parametrize(
    "task_name, record, inputs, targets",
    [
        (
            "taskless_glue_mnli_v002",
            {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
            "hypothesis: H. premise: P.",
            "contradiction",
        ),
        (
            "glue_qqp_v002_t5format",
            {"question1": "Why?", "question2": "How?", "label": 1, "idx": 0},
            "qqp question1: Why? question2: How?",
            "duplicate",
        ),
        (
            "taskless_glue_mrpc_as_qqp_v002",
            {"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 0},
            "sentence1: A. sentence2: B.",
            "duplicate",
        ),
        (
            "taskless_glue_qqp_as_mrpc_v002",
            {"question1": "Q1", "question2": "Q2", "label": 0, "idx": 0},
            "question1: Q1 question2: Q2",
            "not_equivalent",
        ),
        (
            "taskless_glue_cola_v002",
            {"sentence": "Him ran.", "label": 0, "idx": 0},
            "sentence: Him ran.",
            "unacceptable",
        ),
        (
            "glue_stsb_v002_t5format",
            {"sentence1": "A", "sentence2": "B", "label": 3.31, "idx": 0},
            "stsb sentence1: A sentence2: B",
            "3.4",  # round(3.31 * 5) / 5
        ),
    ],
)
def test_registered_text_casts(task_name, record, inputs, targets):
    dataset = tf.data.Dataset.from_tensors(record)
    out = list(_first_preprocessor(task_name)(dataset).as_numpy_iterator())
    assert out[0]["inputs"].decode() == inputs
    assert out[0]["targets"].decode() == targets


def test_transfer_tasks_share_label_strings_and_postprocessing():
    qqp, mrpc_as_qqp = (
        seqio.get_mixture_or_task(n)
        for n in ("taskless_glue_qqp_v002", "taskless_glue_mrpc_as_qqp_v002")
    )
    assert label_strings("taskless_glue_qqp_v002") == label_strings(
        "taskless_glue_mrpc_as_qqp_v002"
    )
    assert label_strings("taskless_glue_mrpc_v002") == label_strings(
        "taskless_glue_qqp_as_mrpc_v002"
    )
    for task in (qqp, mrpc_as_qqp):
        assert task.postprocess_fn("duplicate", example={}, is_target=False) == 1
        assert task.postprocess_fn("equivalent", example={}, is_target=False) == -1


def test_task_metrics_are_t5s_plus_mean():
    expected = {
        "taskless_glue_cola_v002": {"matthews_corrcoef"},
        "taskless_glue_sst2_v002": {"accuracy"},
        "taskless_glue_mrpc_v002": {"f1", "accuracy"},
        "taskless_glue_qqp_v002": {"f1", "accuracy"},
        "taskless_glue_stsb_v002": {"pearson_corrcoef", "spearman_corrcoef"},
        "taskless_glue_rte_v002": {"accuracy"},
    }
    for name, keys in expected.items():
        task = seqio.get_mixture_or_task(name)
        (metric_fn,) = task.predict_metric_fns
        targets, predictions = ([1.0, 2.0, 0.0], [1.0, 0.0, 0.0])
        if name != "taskless_glue_stsb_v002":
            targets, predictions = [1, 0, 1], [1, 0, -1]
        got = metric_fn(targets, predictions)
        assert set(got) == keys | {"invalid_predictions", "mean_of_metrics"}, name
    assert seqio.get_mixture_or_task("taskless_glue_ax_v002").predict_metric_fns == []
