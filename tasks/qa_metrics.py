"""SQuAD v1.1 exact match and F1, as in the official evaluation script (and T5's `squad` metric).

Answers are normalised by lowercasing, removing ASCII punctuation, removing the articles
`a`/`an`/`the` and collapsing whitespace. Each prediction scores the maximum over its reference
answers; the dataset score is the mean ×100.
"""

import collections
import re
import string
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _as_text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def normalize_answer(text: str | bytes) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in _as_text(text).lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str | bytes, reference: str | bytes) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1(prediction: str | bytes, reference: str | bytes) -> float:
    """Token-level F1 of the normalised strings (0.0 when they share no token)."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    common = collections.Counter(predicted) & collections.Counter(expected)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(predicted)
    recall = num_same / len(expected)
    return 2 * precision * recall / (precision + recall)


def max_over_references(metric, prediction: str | bytes, references: Sequence) -> float:
    """The best score of `prediction` against any reference answer."""
    if isinstance(references, (str, bytes)):
        references = [references]
    return max(metric(prediction, reference) for reference in references)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD EM and F1 ×100: a seqio metric `(targets, predictions)`.

    Args:
      targets: per example, the list of reference answers (a single string is one reference).
      predictions: per example, the predicted answer.

    Returns:
      `{"em": ..., "f1": ...}`, each the mean over examples of the max over references, ×100.

    Raises:
      ValueError: the numbers of targets and predictions differ, or an example has no reference.
    """
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
    if any(not isinstance(t, (str, bytes)) and len(t) == 0 for t in targets):
        raise ValueError("Every example needs at least one reference answer; one has none.")
    if not predictions:
        return {"em": 0.0, "f1": 0.0}
    em_total = sum(max_over_references(exact_match, p, t) for t, p in zip(targets, predictions))
    f1_total = sum(max_over_references(f1, p, t) for t, p in zip(targets, predictions))
    return {"em": 100.0 * em_total / len(predictions), "f1": 100.0 * f1_total / len(predictions)}
