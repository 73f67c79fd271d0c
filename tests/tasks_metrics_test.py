"""Metrics and postprocessors against sklearn/scipy and hand-computed values."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from tasks import metrics, postprocessors

# Fixed predictions with invalid ones (-1: the model wrote something that is not a label).
TARGETS = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
PREDICTIONS = [1, 0, 0, -1, 0, 1, 1, -1, 1, 0]


def test_accuracy_counts_invalid_as_wrong():
    got = metrics.accuracy(TARGETS, PREDICTIONS)
    # Right: positions 0, 1, 4, 6, 8 -> 5 of 10.
    assert got == {"accuracy": 50.0, "invalid_predictions": 2}
    assert got["accuracy"] == pytest.approx(
        100 * sklearn.metrics.accuracy_score(TARGETS, PREDICTIONS)
    )


def test_f1_with_invalid_matches_sklearn_after_flipping_invalid():
    got = metrics.f1_score_with_invalid(TARGETS, PREDICTIONS)
    # T5: an invalid prediction becomes the wrong class: index 3 (target 1) -> 0, 7 (0) -> 1.
    flipped = [1, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert got["f1"] == pytest.approx(100 * sklearn.metrics.f1_score(TARGETS, flipped))
    # By hand: tp = 3 (0, 6, 8), fp = 2 (5, 7), fn = 3 (2, 3, 9) -> 6 / 11.
    assert got["f1"] == pytest.approx(100 * 6 / 11)
    assert got["invalid_predictions"] == 2


def test_f1_is_zero_without_positives():
    assert metrics.f1_score_with_invalid([0, 0], [0, 0])["f1"] == 0.0


def test_mean_multiclass_f1_matches_sklearn_macro():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 40)
    predictions = rng.integers(-1, 3, 40)
    got = metrics.mean_multiclass_f1(3)(targets, predictions)
    expected = sklearn.metrics.f1_score(targets, predictions, labels=[0, 1, 2], average="macro")
    assert got["mean_3class_f1"] == pytest.approx(100 * expected)
    assert got["invalid_predictions"] == int(np.sum(predictions == -1))


def test_mean_multiclass_f1_by_hand():
    # Class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 0 -> 0.
    got = metrics.mean_multiclass_f1(3)([0, 0, 1, 2], [0, 1, 1, -1])
    assert got["mean_3class_f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_matthews_corrcoef_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 30)
    predictions = rng.integers(-1, 2, 30)
    got = metrics.matthews_corrcoef(targets, predictions)
    expected = sklearn.metrics.matthews_corrcoef(targets, predictions)
    assert got["matthews_corrcoef"] == pytest.approx(100 * expected)


def test_matthews_corrcoef_by_hand_and_degenerate():
    # tp 2, tn 1, fp 1, fn 0: (2*1 - 1*0) / sqrt(3 * 2 * 2 * 1) = 2 / sqrt(12).
    got = metrics.matthews_corrcoef([1, 1, 0, 0], [1, 1, 1, 0])["matthews_corrcoef"]
    assert got == pytest.approx(100 * 2 / np.sqrt(12))
    assert metrics.matthews_corrcoef([1, 1], [1, 1])["matthews_corrcoef"] == 0.0


def test_pearson_and_spearman_match_scipy_with_ties_and_invalid():
    targets = [0.0, 1.2, 2.4, 2.4, 3.8, 5.0, 4.2, 1.0]
    predictions = [0.2, 1.0, 2.4, 3.0, 3.0, 4.8, -1.0, 1.0]
    pearson = metrics.pearson_corrcoef(targets, predictions)
    spearman = metrics.spearman_corrcoef(targets, predictions)
    assert pearson["pearson_corrcoef"] == pytest.approx(
        100 * scipy.stats.pearsonr(targets, predictions)[0]
    )
    assert spearman["spearman_corrcoef"] == pytest.approx(
        100 * scipy.stats.spearmanr(targets, predictions)[0]
    )
    assert pearson["invalid_predictions"] == spearman["invalid_predictions"] == 1


def test_multirc_exact_match_per_question_and_f1_over_answers():
    targets = [
        {"value": 1, "group": 0},
        {"value": 0, "group": 0},
        {"value": 1, "group": 1},
        {"value": 1, "group": 1},
        {"value": 0, "group": 2},
    ]
    predictions = [{"value": v} for v in (1, 0, 1, -1, 0)]
    # Question 0 all right, question 1 has an invalid answer, question 2 right -> 2 / 3.
    em = metrics.multirc_exact_match(targets, predictions)
    assert em == {"exact_match": pytest.approx(200 / 3), "invalid_predictions": 1}
    # Answers: tp 2, fn 1 (the invalid one), fp 0 -> F1 = 4 / 5.
    f1 = metrics.multirc_f1_over_all_answers(targets, predictions)
    assert f1["f1"] == pytest.approx(80.0)


def test_normalize_squad():
    assert metrics.normalize_squad("The  Eiffel-Tower, an icon!") == "eiffeltower icon"
    assert metrics.normalize_squad("A cat") == "cat"


def test_record_max_over_answers_and_deduplicated():
    targets = [
        {"value": ["Barack Obama", "Obama"], "group": (0, 0)},
        {"value": ["Barack Obama", "Obama"], "group": (0, 0)},  # same query, second answer
        {"value": ["New York City"], "group": (0, 1)},
    ]
    predictions = [{"value": "obama."}, {"value": "obama."}, {"value": "the city of York"}]
    got = metrics.record_em_f1(targets, predictions)
    # Query 0: EM 1 (matches "Obama"); query 1: tokens {city, of, york} vs {new, york, city}:
    # 2 common, precision 2/3, recall 2/3 -> F1 2/3, EM 0.
    assert got["em"] == pytest.approx(50.0)
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_mean_of_metrics_joins_and_averages_without_invalid_count():
    joined = metrics.mean_of_metrics(metrics.f1_score_with_invalid, metrics.accuracy)
    got = joined(TARGETS, PREDICTIONS)
    assert got["f1"] == pytest.approx(100 * 6 / 11)
    assert got["accuracy"] == 50.0
    assert got["invalid_predictions"] == 2
    assert got["mean_of_metrics"] == pytest.approx((100 * 6 / 11 + 50.0) / 2)


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="one prediction"):
        metrics.accuracy([0, 1], [0])


def test_string_label_postprocessor():
    labels = ("not_equivalent", "equivalent")
    assert postprocessors.string_label_to_class_id("equivalent", labels) == 1
    assert postprocessors.string_label_to_class_id(b"not_equivalent", labels) == 0
    assert postprocessors.string_label_to_class_id("Equivalent", labels) == -1
    assert postprocessors.string_to_float("3.4") == 3.4
    assert postprocessors.string_to_float("three") == -1.0


def test_multirc_and_record_postprocessors():
    example = {"idx/question": 9, "idx/passage": 2, "idx/query": 3, "answers": [b"A", b"B"]}
    assert postprocessors.multirc("True", example=example, is_target=True) == {
        "value": 1,
        "group": 9,
    }
    assert postprocessors.multirc("maybe") == {"value": -1}
    assert postprocessors.record(b"A", example=example, is_target=True) == {
        "value": ["A", "B"],
        "group": (2, 3),
    }
    assert postprocessors.record("A") == {"value": "A"}


@pytest.mark.parametrize(
    "prediction, candidate, expected",
    [
        ("the bunny", "fuzzy bunny", 1),  # determiners ignored, subset
        ("The Fuzzy Bunny hat", "fuzzy bunny", 1),  # superset
        ("Bob", "Bob's hat", 0),  # apostrophe in one only
        ("Ann", "Bob", 0),
        ("the", "Bob", -1),  # nothing left: invalid
    ],
)
def test_wsc_simple_postprocessor(prediction, candidate, expected):
    example = {"targets_pretokenized": candidate.encode(), "label": 1}
    assert postprocessors.wsc_simple(prediction, example=example) == expected
    assert postprocessors.wsc_simple(candidate, example=example, is_target=True) == 1
