"""SuperGLUE tasks: each registration builds on TFDS mock data; WSC, ReCoRD, MultiRC end to end."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import naming, preprocessors, superglue
from tasks.labels import label_strings

LENGTHS = {"inputs": 64, "targets": 8}
NUM_EXAMPLES = 3
USE_CODE = tfds.testing.MockPolicy.USE_CODE

# Classification tasks: name -> (split read in the test, T5's task word in the T5-format variant).
CLASSIFICATION_TASKS = {
    "taskless_super_glue_boolq_v102": ("validation", "boolq"),
    "taskless_super_glue_cb_v102": ("validation", "cb"),
    "taskless_super_glue_copa_v102": ("validation", "copa"),
    "taskless_super_glue_multirc_v102": ("validation", "multirc"),
    "taskless_super_glue_rte_v102": ("validation", "rte"),
    "taskless_super_glue_wic_v102": ("validation", "wic"),
    "taskless_super_glue_axb_v102": ("test", "rte"),
    "taskless_super_glue_axg_v102": ("test", "rte"),
}
GENERATIVE_TASKS = (
    "taskless_super_glue_record_v102",
    "taskless_super_glue_wsc_v102_simple_train",
    "taskless_super_glue_wsc_v102_simple_eval",
)


def _t5format(name: str) -> str:
    """`taskless_<T5 name>` -> `<T5 name>_t5format` (`tasks.naming`)."""
    return naming.t5format(name.removeprefix(naming.TASKLESS_PREFIX))


def _examples(task_name: str, split: str) -> list[dict]:
    """The task's examples through its whole pipeline (text cast, tokenization, EOS)."""
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
    return list(dataset.as_numpy_iterator())


def _texts(task_name: str, split: str) -> list[dict]:
    """The task's examples after its text cast only."""
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.source.get_dataset(split=split, shuffle=False)
    return list(task.preprocessors[0](dataset).as_numpy_iterator())


def _fixed_records(records: list[dict]):
    """A `mock_data(as_dataset_fn=...)` that serves `records` for every split."""

    def as_dataset(self, *args, **kwargs):
        spec = self.info.features.get_tensor_spec()
        return tf.data.Dataset.from_generator(lambda: iter(records), output_signature=spec)

    return as_dataset


def test_every_super_glue_task_is_registered_in_both_formats():
    names = set(CLASSIFICATION_TASKS) | set(GENERATIVE_TASKS)
    assert set(seqio.TaskRegistry.names()) >= names | {_t5format(n) for n in names}
    for name in GENERATIVE_TASKS:
        assert label_strings(name) is None and label_strings(_t5format(name)) is None
    for name in names:
        tfds_name = seqio.get_mixture_or_task(name).source.tfds_dataset.name
        assert tfds_name.startswith("super_glue/") and tfds_name.endswith(":1.0.2"), tfds_name


@pytest.mark.parametrize("name", sorted(CLASSIFICATION_TASKS))
def test_classification_task_builds_on_mock_data_in_both_formats(name):
    split, prefix = CLASSIFICATION_TASKS[name]
    labels = label_strings(name)
    assert label_strings(_t5format(name)) == labels
    preprocessors.reset_dropped_counts()
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=USE_CODE):
        plain = _examples(name, split)
        assert len(plain) + sum(preprocessors.dropped_counts().values()) == NUM_EXAMPLES
        prefixed = _texts(_t5format(name), split)
    assert len(prefixed) == len(plain) > 0
    for ex, ex_prefixed in zip(plain, prefixed):
        text = ex["inputs_pretokenized"].decode()
        assert ex_prefixed["inputs"].decode() == f"{prefix} {text}"
        assert ex["targets_pretokenized"].decode() in labels
        assert ex["inputs"].dtype == np.int32 and ex["targets"][-1] == 1


def test_label_strings_are_tfds_label_classes():
    configs = {c.name: c for c in tfds.builder_cls("super_glue").BUILDER_CONFIGS}
    for config, labels in [
        ("boolq", superglue.BOOL_LABELS),
        ("cb", superglue.CB_LABELS),
        ("copa", superglue.COPA_LABELS),
        ("multirc", superglue.BOOL_LABELS),
        ("rte", superglue.RTE_LABELS),
        ("wic", superglue.BOOL_LABELS),
        ("axb", superglue.RTE_LABELS),
        ("axg", superglue.RTE_LABELS),
    ]:
        assert tuple(configs[config].label_classes) == labels, config


def test_generative_tasks_build_on_random_mock_data():
    preprocessors.reset_dropped_counts()
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=USE_CODE):
        examples = _examples("taskless_super_glue_record_v102", "validation")
        # Random WSC text almost never has the pronoun at its index: dropped and counted, no crash.
        wsc = _examples("taskless_super_glue_wsc_v102_simple_eval", "validation")
    for ex in examples:
        assert ex["targets_pretokenized"] in list(ex["answers"])
        assert ex["inputs_pretokenized"].startswith(b"query: ")
    counts = preprocessors.dropped_counts()
    dropped = counts.get("super_glue/record:no_answers", 0)
    assert len({int(ex["idx/query"]) for ex in examples}) + dropped <= NUM_EXAMPLES
    wsc_dropped = sum(v for k, v in counts.items() if k.startswith("super_glue/wsc.fixed:"))
    assert len(wsc) + wsc_dropped == NUM_EXAMPLES


RECORD = {
    "passage": "Ann met Bob.\n@highlight\nThey talked",
    "query": "@placeholder met Bob.",
    "entities": ["Ann", "Bob"],
    "answers": ["Ann", "Ann."],
    "idx": {"passage": 0, "query": 5},
}


def test_record_end_to_end():
    with tfds.testing.mock_data(as_dataset_fn=_fixed_records([RECORD]), policy=USE_CODE):
        examples = _examples("super_glue_record_v102_t5format", "validation")
    expected = (
        "record query: @placeholder met Bob. entities: Ann, Bob passage: Ann met Bob. They talked"
    )
    assert [ex["inputs_pretokenized"].decode() for ex in examples] == [expected, expected]
    assert [ex["targets_pretokenized"] for ex in examples] == [b"Ann", b"Ann."]
    task = seqio.get_mixture_or_task("taskless_super_glue_record_v102")
    targets = [
        task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
        for ex in examples
    ]
    predictions = [task.postprocess_fn(p, example=ex) for p, ex in zip(["Ann", "Ann"], examples)]
    (metric_fn,) = task.predict_metric_fns
    # One query (deduplicated), predicted right.
    assert metric_fn(targets, predictions) == {"em": 100.0, "f1": 100.0, "mean_of_metrics": 100.0}


def _wsc(text, referent, pronoun, index, label, idx):
    return {
        "text": text,
        "span1_text": referent,
        "span1_index": 0,
        "span2_text": pronoun,
        "span2_index": index,
        "label": label,
        "idx": idx,
    }


WSC = [
    _wsc("The cup fell because it was heavy .", "The cup", "it", 4, 1, 0),
    _wsc("The cup hit the bowl because it was heavy .", "the bowl", "it", 6, 0, 1),
    _wsc("Ann thanked Bea because she helped .", "Bea", "she", 4, 1, 2),
]


def test_wsc_simple_train_keeps_right_referents_only():
    with tfds.testing.mock_data(as_dataset_fn=_fixed_records(WSC), policy=USE_CODE):
        examples = _examples("taskless_super_glue_wsc_v102_simple_train", "train")
        prefixed = _texts("super_glue_wsc_v102_simple_train_t5format", "train")
    assert [ex["inputs_pretokenized"].decode() for ex in examples] == [
        "The cup fell because *it* was heavy .",
        "Ann thanked Bea because *she* helped .",
    ]
    assert [ex["targets_pretokenized"] for ex in examples] == [b"The cup", b"Bea"]
    assert prefixed[0]["inputs"] == b"wsc: The cup fell because *it* was heavy ."


def test_wsc_simple_eval_end_to_end():
    with tfds.testing.mock_data(as_dataset_fn=_fixed_records(WSC), policy=USE_CODE):
        examples = _examples("taskless_super_glue_wsc_v102_simple_eval", "validation")
    assert [int(ex["label"]) for ex in examples] == [1, 0, 1]
    task = seqio.get_mixture_or_task("taskless_super_glue_wsc_v102_simple_eval")
    # Right: "cup" is the candidate (label 1); "cup" is not "the bowl" (label 0): right as well;
    # "" is invalid (wrong).
    outputs = ["cup", "the cup", ""]
    predictions = [task.postprocess_fn(o, example=ex) for o, ex in zip(outputs, examples)]
    targets = [
        task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
        for ex in examples
    ]
    assert predictions == [1, 0, -1] and targets == [1, 0, 1]
    (metric_fn,) = task.predict_metric_fns
    got = metric_fn(targets, predictions)
    assert got["accuracy"] == pytest.approx(200 / 3) and got["invalid_predictions"] == 1


def _multirc(question_idx, answer_idx, answer, label):
    return {
        "paragraph": "Bob ran.<br>He won.",
        "question": f"Question {question_idx}?",
        "answer": answer,
        "label": label,
        "idx": {"paragraph": 0, "question": question_idx, "answer": answer_idx},
    }


def test_multirc_end_to_end():
    records = [_multirc(0, 0, "Bob", 1), _multirc(0, 1, "Ann", 0), _multirc(1, 2, "Yes", 1)]
    with tfds.testing.mock_data(as_dataset_fn=_fixed_records(records), policy=USE_CODE):
        examples = _examples("taskless_super_glue_multirc_v102", "validation")
    first = examples[0]["inputs_pretokenized"].decode()
    assert first == "question: Question 0? answer: Bob paragraph: Bob ran. He won."
    task = seqio.get_mixture_or_task("taskless_super_glue_multirc_v102")
    targets = [
        task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
        for ex in examples
    ]
    assert targets == [{"value": 1, "group": 0}, {"value": 0, "group": 0}, {"value": 1, "group": 1}]
    predictions = [
        task.postprocess_fn(o, example=ex) for o, ex in zip(["True", "True", "True"], examples)
    ]
    (metric_fn,) = task.predict_metric_fns
    got = metric_fn(targets, predictions)
    # Question 0 has a wrong answer, question 1 is right: EM 50. Answers: tp 2, fp 1 -> F1 80.
    assert got["exact_match"] == 50.0 and got["f1"] == pytest.approx(80.0)
    assert got["mean_of_metrics"] == pytest.approx(65.0)


def test_task_metrics():
    expected = {
        "taskless_super_glue_boolq_v102": {"accuracy"},
        "taskless_super_glue_cb_v102": {"mean_3class_f1", "accuracy"},
        "taskless_super_glue_copa_v102": {"accuracy"},
        "taskless_super_glue_rte_v102": {"accuracy"},
        "taskless_super_glue_wic_v102": {"accuracy"},
        "taskless_super_glue_axb_v102": {"matthews_corrcoef"},
        "taskless_super_glue_axg_v102": {"accuracy"},
    }
    for name, keys in expected.items():
        task = seqio.get_mixture_or_task(name)
        (metric_fn,) = task.predict_metric_fns
        got = metric_fn([0, 1, 1], [0, 1, -1])
        assert set(got) == keys | {"invalid_predictions", "mean_of_metrics"}, name
    assert (
        seqio.get_mixture_or_task("taskless_super_glue_wsc_v102_simple_train").predict_metric_fns
        == []
    )
