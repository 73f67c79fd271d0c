"""Model outputs (decoded strings) turned into the values the metrics compare, as T5's.

seqio calls a postprocessor as `fn(decoded, example=..., is_target=...)`: once per prediction and
once per target (on `targets_pretokenized`, with the whole example). Strings may arrive as `bytes`.
A prediction that is not a label becomes `INVALID` (-1), which the metrics count as wrong and report
as `invalid_predictions`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

INVALID = -1

# T5 `wsc_simple`: words ignored when comparing a predicted referent with the candidate one.
_DETERMINERS = frozenset(
    "a an few her his each every many much my our some that the their these this those which "
    "whose your".split()
)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def string_label_to_class_id(
    output: str | bytes,
    label_classes: Sequence[str],
    example: Mapping[str, Any] | None = None,
    is_target: bool = False,
) -> int:
    """Returns the index of `output` in `label_classes`, or `INVALID` (-1) when it is not a label.

    Args:
      output: the decoded prediction or target string.
      label_classes: the label strings, indexed by class id.
      example: unused (seqio passes it).
      is_target: unused (seqio passes it).

    Returns:
      The class id, or -1.
    """
    del example, is_target
    text = _text(output)
    return label_classes.index(text) if text in label_classes else INVALID


def string_to_float(
    output: str | bytes,
    default: float = float(INVALID),
    example: Mapping[str, Any] | None = None,
    is_target: bool = False,
    label_classes: Sequence[str] | None = None,
) -> float:
    """Parses a float (STS-B scores), or returns `default` (-1.0) when `output` is not a number.

    `label_classes` (the task's target strings, bound with `functools.partial`) is not read here:
    it tells rank classification which strings to score, as for `string_label_to_class_id`.
    """
    del example, is_target, label_classes
    try:
        return float(_text(output))
    except ValueError:
        return default


def multirc(
    output: str | bytes,
    example: Mapping[str, Any] | None = None,
    is_target: bool = False,
    label_classes: Sequence[str] = ("False", "True"),
) -> dict[str, int]:
    """MultiRC: `{"value": class id in label_classes}`, plus `"group"` (question id) for targets.

    Raises:
      ValueError: a target without its example (seqio always passes it).
    """
    result = {"value": string_label_to_class_id(output, label_classes)}
    if is_target:
        if example is None:
            raise ValueError("MultiRC targets need `example` (its idx/question groups answers).")
        result["group"] = int(example["idx/question"])
    return result


def record(
    output: str | bytes, example: Mapping[str, Any] | None = None, is_target: bool = False
) -> dict[str, Any]:
    """ReCoRD: `{"value": prediction}`; for targets, all answers and the (passage, query) group.

    Raises:
      ValueError: a target without its example (seqio always passes it).
    """
    if not is_target:
        return {"value": _text(output)}
    if example is None:
        raise ValueError("ReCoRD targets need `example` (its answers and idx/passage, idx/query).")
    return {
        "value": [_text(a) for a in example["answers"]],
        "group": (int(example["idx/passage"]), int(example["idx/query"])),
    }


def _clean_referent(text: str) -> str:
    """Lower-cases and removes determiners, as T5 does before comparing referents."""
    words = text.strip().lower().split(" ")
    return " ".join(w for w in words if w not in _DETERMINERS)


def wsc_simple(
    output: str | bytes, example: Mapping[str, Any] | None = None, is_target: bool = False
) -> int:
    """WSC: 1 when the predicted referent is the example's candidate, else 0 (T5's rule).

    For targets returns the example's `label` (1: the candidate is the right referent). A
    prediction matches when, ignoring case and determiners, its words are a subset or superset of
    the candidate's, and both or neither contain an apostrophe ("Bob" does not match "Bob's hat").
    An empty prediction is `INVALID`.

    Raises:
      ValueError: called without `example` (the candidate referent is in it).
    """
    if example is None:
        raise ValueError("wsc_simple needs `example` (label and targets_pretokenized).")
    if is_target:
        return int(example["label"])
    prediction = _clean_referent(_text(output))
    if not prediction:
        return INVALID
    referent = _clean_referent(_text(example["targets_pretokenized"]))
    if ("'" in prediction) != ("'" in referent):
        return 0
    predicted, candidate = set(prediction.split(" ")), set(referent.split(" "))
    return int(predicted <= candidate or candidate <= predicted)
