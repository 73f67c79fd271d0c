"""T5's GLUE/SuperGLUE metrics in numpy, as seqio metric functions `(targets, predictions) -> dict`.

Values are percentages (x100) as in T5's `t5/evaluation/metrics.py`, with T5's keys (`accuracy`,
`f1`, `mean_3class_f1`, `matthews_corrcoef`, `pearson_corrcoef`, `spearman_corrcoef`,
`exact_match`, `em`). Predictions come from `tasks.postprocessors`: a prediction that is not a label
is `INVALID` (-1, or -1.0 for STS-B); it counts as wrong, and classification metrics also report how
many there were as `invalid_predictions` (a count, not a percentage).

`mean_of_metrics(*fns)` joins metric functions into one that also returns their mean
(`mean_of_metrics` key), one number per task for early stopping and model selection.
"""

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tasks.postprocessors import INVALID

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]

INVALID_KEY = "invalid_predictions"
MEAN_KEY = "mean_of_metrics"


def _arrays(targets: Sequence[Any], predictions: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    if targets.shape != predictions.shape:
        raise ValueError(
            f"{targets.shape[0]} targets but {predictions.shape[0]} predictions: "
            "every example needs one prediction."
        )
    return targets, predictions


def _invalid(predictions: np.ndarray) -> np.ndarray:
    return predictions < 0 if predictions.size else np.zeros(0, bool)


def accuracy(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Percentage of predictions equal to their target; invalid ones (-1) are wrong."""
    t, p = _arrays(targets, predictions)
    return {"accuracy": 100.0 * float(np.mean(t == p)), INVALID_KEY: int(_invalid(p).sum())}


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2 tp / (2 tp + fp + fn); 0 when there is nothing to score (as sklearn)."""
    denominator = 2 * tp + fp + fn
    return 0.0 if denominator == 0 else 2.0 * tp / denominator


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Binary F1 of class 1; a prediction other than 0/1 is set to the wrong class (T5)."""
    t, p = _arrays(targets, predictions)
    invalid = (p != 0) & (p != 1)
    p = np.where(invalid, 1 - t, p)
    tp = int(np.sum((t == 1) & (p == 1)))
    fp = int(np.sum((t != 1) & (p == 1)))
    fn = int(np.sum((t == 1) & (p != 1)))
    return {"f1": 100.0 * _f1(tp, fp, fn), INVALID_KEY: int(invalid.sum())}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
    """Returns the unweighted mean over classes `0..num_classes-1` of per-class F1 (CB, T5).

    An invalid prediction is a false negative of its target's class and no class's false positive.

    Args:
      num_classes: the number of classes.

    Returns:
      A metric function with key `mean_{num_classes}class_f1`.
    """

    def metric(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
        t, p = _arrays(targets, predictions)
        scores = []
        for c in range(num_classes):
            tp = int(np.sum((t == c) & (p == c)))
            scores.append(_f1(tp, int(np.sum(p == c)) - tp, int(np.sum(t == c)) - tp))
        return {
            f"mean_{num_classes}class_f1": 100.0 * float(np.mean(scores)),
            INVALID_KEY: int(_invalid(p).sum()),
        }

    return metric


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Matthews correlation x100 (CoLA), multi-class form; an invalid prediction is its own class.

    From the confusion matrix C over all seen labels: `(c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))`
    with c correct, s total, t and p the true and predicted class counts; 0 when undefined.
    """
    t, p = _arrays(targets, predictions)
    labels = np.union1d(t, p)
    t_counts = np.array([np.sum(t == c) for c in labels], dtype=np.float64)
    p_counts = np.array([np.sum(p == c) for c in labels], dtype=np.float64)
    correct, total = float(np.sum(t == p)), float(t.size)
    covariance = correct * total - t_counts @ p_counts
    scale = (total**2 - p_counts @ p_counts) * (total**2 - t_counts @ t_counts)
    mcc = 0.0 if scale == 0 else covariance / np.sqrt(scale)
    return {"matthews_corrcoef": 100.0 * float(mcc), INVALID_KEY: int(_invalid(p).sum())}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float("nan") if denominator == 0 else float(np.sum(x * y) / denominator)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson correlation x100 (STS-B); invalid predictions stay -1.0 (T5)."""
    t, p = _arrays(targets, predictions)
    t, p = t.astype(np.float64), p.astype(np.float64)
    return {"pearson_corrcoef": 100.0 * _pearson(t, p), INVALID_KEY: int(_invalid(p).sum())}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Spearman rank correlation x100 (STS-B): Pearson of the tie-averaged ranks."""
    t, p = _arrays(targets, predictions)
    t, p = t.astype(np.float64), p.astype(np.float64)
    rho = _pearson(_average_ranks(t), _average_ranks(p))
    return {"spearman_corrcoef": 100.0 * rho, INVALID_KEY: int(_invalid(p).sum())}


def multirc_f1_over_all_answers(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """MultiRC F1a: binary F1 over every answer option (`value` of the postprocessed dicts)."""
    return f1_score_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def multirc_exact_match(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """MultiRC EM: percentage of questions (`group`) whose answer options are all right."""
    grouped: dict[Any, list[bool]] = collections.defaultdict(list)
    for target, prediction in zip(targets, predictions, strict=True):
        grouped[target["group"]].append(target["value"] == prediction["value"])
    exact = [all(right) for right in grouped.values()]
    invalid = sum(p["value"] == INVALID for p in predictions)
    return {"exact_match": 100.0 * float(np.mean(exact)), INVALID_KEY: int(invalid)}


def normalize_squad(text: str) -> str:
    """SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
    predicted, expected = prediction.split(), target.split()
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def record_em_f1(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """ReCoRD EM and token F1, each the max over the query's answers, SQuAD-normalised.

    A query appears once per answer in the data; only its first copy is scored (T5's
    `deduplicate_metric` on the (passage, query) `group`).
    """
    seen, em, f1 = set(), [], []
    for target, prediction in zip(targets, predictions, strict=True):
        if target["group"] in seen:
            continue
        seen.add(target["group"])
        answers = [normalize_squad(a) for a in target["value"]]
        predicted = normalize_squad(prediction["value"])
        em.append(max(float(a == predicted) for a in answers))
        f1.append(max(_token_f1(a, predicted) for a in answers))
    return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def mean_of_metrics(*metric_fns: MetricFn) -> MetricFn:
    """Joins metric functions; the result also has `mean_of_metrics`, the mean of their values.

    `invalid_predictions` is reported but left out of the mean.

    Args:
      *metric_fns: seqio-style metric functions `(targets, predictions) -> dict`.

    Returns:
      A metric function returning every key of `metric_fns` plus `mean_of_metrics`.
    """

    def metric(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
        results: dict[str, float] = {}
        for fn in metric_fns:
            results.update(fn(targets, predictions))
        scores = [v for k, v in results.items() if k != INVALID_KEY]
        results[MEAN_KEY] = float(np.mean(scores))
        return results

    return metric
