"""Tests of the SQuAD/MRQA tasks and the SQuAD metrics."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import qa, qa_metrics
from tasks.labels import label_strings

LENGTHS = {"inputs": 64, "targets": 16}


def test_normalize_answer_follows_squad():
    assert qa_metrics.normalize_answer("The  Cat, a DOG!") == "cat dog"
    assert qa_metrics.normalize_answer(b"an apple-pie (theory)") == "applepie theory"
    assert qa_metrics.normalize_answer("Theatre") == "theatre"  # only whole-word articles


def test_f1_and_exact_match_hand_computed():
    # pred tokens {cat, sat}, ref tokens {cat, sat, on, mat}: P = 1, R = 1/2, F1 = 2/3.
    assert qa_metrics.f1("the cat sat", "cat sat on a mat") == pytest.approx(2 / 3)
    assert qa_metrics.f1("dog", "cat") == 0.0
    # Repeated tokens count once per match: pred {a b b}, ref {b b c} -> 2 common.
    assert qa_metrics.f1("x y y", "y y z") == pytest.approx(2 / 3)
    assert qa_metrics.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert qa_metrics.exact_match("Eiffel", "eiffel tower") == 0.0


def test_squad_metric_takes_max_over_references_and_scales_by_100():
    targets = [["Denver Broncos", "the Broncos"], ["1990"], ["Paris France"]]
    predictions = ["Broncos", "1990", "France"]
    # EM: [1 (vs "the Broncos"), 1, 0]; F1: [1, 1, 2*1*0.5/1.5 = 2/3].
    scores = qa_metrics.squad(targets, predictions)
    assert scores["em"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="predictions"):
        qa_metrics.squad(targets, predictions[:2])


def test_pad_punctuation_matches_t5():
    out = qa.pad_punctuation(tf.constant(["U.S. (in 1990)", "it's  ok"])).numpy().tolist()
    assert out == [b"U . S . ( in 1990 ) ", b"it ' s ok"]


def test_squad_preprocessor_golden_example():
    raw = {
        "id": ["q1"],
        "title": ["t"],
        "context": ["Paris is in France."],
        "question": ["Where is Paris?"],
        "answers": {
            "text": tf.ragged.constant([["France", "in France"]]),
            "answer_start": tf.ragged.constant([[12, 9]]),
        },
    }
    ds = tf.data.Dataset.from_tensor_slices(raw)
    plain = next(qa.squad_preprocessor(ds).as_numpy_iterator())
    assert plain["inputs"] == b"question: Where is Paris ? context: Paris is in France . "
    assert plain["targets"] == b"France"
    assert plain["answers"].tolist() == [b"France", b"in France"]
    assert plain["id"] == b"q1"


def _mrqa_dataset(detected):
    raw = {
        "qid": ["m1"],
        "question": ["Who?"],
        "context": ["Ann met Bob."],
        "answers": tf.ragged.constant([["Bob", "bob"]]),
        "detected_answers": {"text": tf.ragged.constant([detected], dtype=tf.string)},
    }
    return tf.data.Dataset.from_tensor_slices(raw)


def test_mrqa_target_is_first_detected_span_else_first_answer():
    ex = next(qa.mrqa_preprocessor(_mrqa_dataset(["Bob."])).as_numpy_iterator())
    assert ex["inputs"] == b"question: Who ? context: Ann met Bob . "
    assert ex["targets"] == b"Bob . "
    assert ex["answers"].tolist() == [b"Bob", b"bob"]
    fallback = next(qa.mrqa_preprocessor(_mrqa_dataset([])).as_numpy_iterator())
    assert fallback["targets"] == b"Bob"


def test_qa_postprocessor_returns_all_answers_for_targets():
    example = {"answers": np.array([b"a", b"b"])}
    assert qa.qa_postprocessor(b"x", example=example, is_target=True) == ["a", "b"]
    assert qa.qa_postprocessor("pred", example=example) == "pred"


ALL_QA_TASKS = ["taskless_squad_v010_allanswers"] + [
    f"mrqa_{c}_v001" for c in qa.MRQA_IN_DOMAIN + qa.MRQA_OUT_OF_DOMAIN
]


def test_every_qa_task_builds_on_mocked_tfds():
    # Every MRQA task and both SQuAD variants, which read T5's format (no task word).
    names = ALL_QA_TASKS + ["squad_v010_allanswers_t5format"]
    with tfds.testing.mock_data(num_examples=2):
        for name in names:
            assert label_strings(name) is None
            task = seqio.get_mixture_or_task(name)
            in_domain = not name.startswith("mrqa") or name[5:-5] in qa.MRQA_IN_DOMAIN
            assert ("train" in task.splits) == in_domain, name
            ds = task.get_dataset(
                LENGTHS, split="validation", shuffle=False, try_in_mem_cache=False
            )
            ex = next(ds.as_numpy_iterator())
            assert ex["inputs_pretokenized"].startswith(b"question: "), name
            assert 0 < len(ex["inputs"]) <= LENGTHS["inputs"] and ex["inputs"][-1] == 1
            assert 0 < len(ex["targets"]) <= LENGTHS["targets"]
            assert task.metric_fns == [qa_metrics.squad]
