"""Rank classification: score every label string of a classification task, predict the best one.

The label strings come from the seqio task itself, as T5 declares them: the `label_classes` bound
into its postprocessor (`functools.partial(string_label_to_class_id, label_classes=[...])`, T5's
GLUE and SuperGLUE tasks and ours), or from an explicit list (the LABELS of the run). No task
registry is consulted, so another team's seqio tasks and T5's own rank-classify as well.

Letters: B batch, T input length, S target length, C number of label strings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if (
    TYPE_CHECKING
):  # annotations only: the predictor (and pt-serve, the decode benchmark) need no seqio
    import seqio

Batch = dict[str, np.ndarray]
Labels = Sequence[str] | Mapping[str, Sequence[str]] | None


def task_labels(task: seqio.Task) -> tuple[str, ...] | None:
    """The label strings a task declares: its postprocessor's bound `label_classes`, or None.

    Args:
      task: a seqio task.

    Returns:
      The labels in class-id order, or None (a generative task, or one that binds none).
    """
    fn = task.postprocessor
    while isinstance(fn, functools.partial):
        if "label_classes" in fn.keywords:
            return tuple(str(label) for label in fn.keywords["label_classes"])
        fn = fn.func
    return None


def labels_for(
    task: seqio.Task, labels: Labels = None, rank_classification: bool | None = None
) -> tuple[str, ...] | None:
    """The label strings to rank for one (sub-)task, or None when it is not rank-classified.

    Args:
      task: the seqio task.
      labels: explicit labels: one list for every task, or `{task name: list}`; tasks without an
        entry fall back to `task_labels`.
      rank_classification: False: never; True: required (an error if there are no labels); None:
        wherever labels are known.

    Returns:
      The labels, or None.

    Raises:
      ValueError: `rank_classification` is True but the task declares no labels and none are
        given.
    """
    if rank_classification is False:
        return None
    if isinstance(labels, Mapping):
        found = labels.get(task.name)
    else:
        found = labels
    found = tuple(found) if found is not None else task_labels(task)
    if found is None and rank_classification:
        raise ValueError(
            f"rank_classification=True but task {task.name!r} declares no label strings (no "
            "`label_classes` bound into its postprocessor); pass them as labels (the LABELS gin "
            "macro) or set rank_classification=None."
        )
    return found


def shift_right(targets: np.ndarray) -> np.ndarray:
    """Decoder inputs of `targets [B, S]`: token 0 (the start token) then targets[:, :-1].

    The one shift-right of prediction: label batches, scored predictions and the server's score
    programs all build their decoder inputs here (on the host).
    """
    return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)  # [B, S]


def tokenize(
    vocabulary: seqio.Vocabulary, text: str, add_eos: bool = True, max_length: int | None = None
) -> np.ndarray:
    """The token ids `[n]` (int32) of one text, as seqio's tasks build a feature.

    Args:
      vocabulary: the feature's vocabulary.
      text: the text.
      add_eos: append EOS (the `inputs`/`targets` features of T5's tasks do).
      max_length: keep at most this many tokens, EOS included (seqio's `append_eos_after_trim`:
        the first tokens, then EOS); None: all.

    Returns:
      `[n]` int32 ids.
    """
    ids = list(vocabulary.encode(text))
    if max_length is not None:
        ids = ids[: max_length - int(add_eos)]
    return np.asarray(ids + ([vocabulary.eos_id] if add_eos else []), np.int32)


def tokenize_labels(
    labels: Sequence[str], vocabulary: seqio.Vocabulary, length: int, add_eos: bool = True
) -> np.ndarray:
    """Tokenizes label strings as decoder targets.

    Args:
      labels: the C label strings.
      vocabulary: the task's target vocabulary.
      length: S, the target feature length.
      add_eos: append EOS, as the task's `targets` feature does.

    Returns:
      `[C, S]` int32 tokens, zero padded.

    Raises:
      ValueError: a label does not fit in `length` tokens.
    """
    out = np.zeros((len(labels), length), np.int32)
    for i, label in enumerate(labels):
        ids = tokenize(vocabulary, label, add_eos)
        if len(ids) > length:
            raise ValueError(
                f"Label {label!r} takes {len(ids)} tokens but the target length is {length}; "
                'raise TASK_FEATURE_LENGTHS["targets"].'
            )
        out[i, : len(ids)] = ids
    return out


def label_batch(batch: Batch, label_tokens: np.ndarray, repeat_inputs: bool = True) -> Batch:
    """Pairs every example with every label: target row `b * C + c` is example b with label c.

    Args:
      batch: model features with `encoder_input_tokens [B, T]`, optional `task_ids [B]`.
      label_tokens: `[C, S]` label targets from `tokenize_labels`.
      repeat_inputs: repeat each example's inputs (and task id) C times, one per target row (a
        plain B*C-row batch); False keeps the B input rows, which `decoding.score` encodes once
        and pairs with their C target rows.

    Returns:
      A batch of B*C target rows whose targets are the labels.
    """
    num_labels = label_tokens.shape[0]
    batch_size = batch["encoder_input_tokens"].shape[0]
    targets = np.tile(label_tokens, (batch_size, 1))  # [B*C, S]
    repeats = num_labels if repeat_inputs else 1
    out = {
        "encoder_input_tokens": np.repeat(batch["encoder_input_tokens"], repeats, 0),  # [B*C, T]
        "decoder_target_tokens": targets,
        "decoder_input_tokens": shift_right(targets),
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }
    if "task_ids" in batch:
        out["task_ids"] = np.repeat(batch["task_ids"], repeats, 0)  # [B*C] (or [B])
    return out


def rank_metrics(
    task: seqio.Task,
    labels: Sequence[str],
    choices: np.ndarray,
    targets_text: Sequence[str],
    task_examples: Sequence[Mapping[str, Any]],
    to_float: Callable[[Any], float | None],
) -> dict[str, float]:
    """Rank accuracy (percent) and the task's predict metrics on the rank-chosen labels.

    Args:
      task: the seqio task (its postprocessor and `predict_metric_fns`).
      labels: the ranked label strings.
      choices: `[num_examples]` index of each example's chosen label.
      targets_text: each example's target string.
      task_examples: the task's examples (passed to the postprocessor).
      to_float: a metric value as a float, or None for non-scalars.

    Returns:
      `{"rank_accuracy": ..., "rank_<metric>": ...}`.
    """
    chosen = [labels[int(c)] for c in choices]
    out = {"rank_accuracy": 100.0 * float(np.mean([p == t for p, t in zip(chosen, targets_text)]))}
    if not task.predict_metric_fns:
        return out
    targets = [
        task.postprocess_fn(t, example=ex, is_target=True)
        for t, ex in zip(targets_text, task_examples)
    ]
    predictions = [
        task.postprocess_fn(p, example=ex, is_target=False) for p, ex in zip(chosen, task_examples)
    ]
    for metric_fn in task.predict_metric_fns:
        for key, value in metric_fn(targets, predictions).items():
            scalar = to_float(value)
            if scalar is not None:
                out[f"rank_{key}"] = scalar
    return out
