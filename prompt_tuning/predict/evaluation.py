"""Evaluation of a prompt-tuned T5 on seqio tasks: decoding metrics, rank classification, best step.

`Evaluator.evaluate` decodes every validation example (greedy or beam search), detokenizes, applies
the task's postprocessor and runs its metric functions with `seqio.Evaluator`'s semantics, for each
task of a mixture. For classification tasks it also does rank classification: every label string
is scored as the target with the summed log-likelihood of `PromptModel.score_batch`, the best one
is the prediction. `select_metric` and `best_step` pick the checkpoint to keep, as the early
stopping on validation of Lester et al. (2021).

Letters: B batch, E examples of a task, T input length, S target length, C number of label strings,
N prompts.
"""

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow_datasets as tfds

from prompt_tuning.faults import batches
from prompt_tuning.predict import rank_classification as ranking
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.predict.rank_classification import (  # noqa: F401 (used by callers)
    Batch,
    label_batch,
    shift_right,
    tokenize_labels,
)
from prompt_tuning.train import data

# Keys of the metric functions' outputs: a task's own selection value, and a count of predictions
# that are no label (never a score).
MEAN_KEY = "mean_of_metrics"
INVALID_KEY = "invalid_predictions"
MODEL_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
)


def check_task_ids(predictor: Any, batch: Batch, where: str) -> None:
    """Checks a host batch's `task_ids` against the predictor's model (`PromptModel`), naming
    `where` the batch comes from; predictors without one (ensembles set their own ids) pass."""
    model = getattr(predictor, "model", None)
    if hasattr(model, "check_task_ids"):
        model.check_task_ids(batch, where)


def pad_batch(batch: Batch, batch_size: int) -> Batch:
    """Pads every feature with zero rows to `batch_size` rows (fixed shapes for `jit`)."""
    out = {}
    for key, value in batch.items():
        pad = [(0, batch_size - value.shape[0])] + [(0, 0)] * (value.ndim - 1)
        out[key] = np.pad(value, pad)
    return out


def iterate_batches(
    examples: Sequence[Mapping[str, np.ndarray]], batch_size: int
) -> Iterator[tuple[Batch, int]]:
    """Groups converted examples into padded model batches.

    Args:
      examples: converted examples (model features, optional `task_ids` scalar).
      batch_size: B; the last batch is padded with zero rows.

    Yields:
      `(batch, n)`: a batch of B rows of which the first n are real examples.

    Raises:
      faults.Stopped: inside `faults.batches.stop_at_batches` (evaluation and inference runs),
        after a batch when every process agreed to stop on a signal.
    """
    keys = [k for k in (*MODEL_FEATURES, "task_ids") if examples and k in examples[0]]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: np.stack([np.asarray(ex[k]) for ex in chunk]) for k in keys}
        yield pad_batch(batch, batch_size), len(chunk)
        batches.batch_boundary()


def target_text(example: Mapping[str, Any], vocabulary: seqio.Vocabulary) -> str:
    """The target string of a task example: `targets_pretokenized`, else decoded `targets`."""
    if "targets_pretokenized" in example:
        value = example["targets_pretokenized"]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return vocabulary.decode([int(t) for t in example["targets"]])


def _to_float(value: Any) -> float | None:
    """A metric value as a float, or None when it is not a scalar (text, histogram)."""
    value = getattr(value, "value", value)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return float(array) if array.ndim == 0 else None


def task_examples(
    task: seqio.Task,
    feature_lengths: Mapping[str, int],
    split: str,
    num_examples: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, np.ndarray]]]:
    """A task's examples, in order, as task features and as converted model features.

    Args:
      task: a registered seqio task.
      feature_lengths: `{"inputs": T, "targets": S}`.
      split: the split to read.
      num_examples: only the first examples (None: all).

    Returns:
      `(task_examples, model_examples)`: numpy dicts, one of each per example; model examples
      carry the example's `task_ids` when the task provides it.
    """
    lengths = {k: feature_lengths[k] for k in ("inputs", "targets")}
    dataset = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1)
    if num_examples:
        dataset = dataset.take(num_examples)
    dataset = dataset.cache()
    converted = seqio.EncDecFeatureConverter(pack=False)(dataset, lengths)
    raw = list(tfds.as_numpy(dataset))
    model = list(tfds.as_numpy(converted))
    for ex, task_ex in zip(model, raw):
        if "task_ids" in task_ex:
            ex["task_ids"] = np.asarray(task_ex["task_ids"], np.int32)
    return raw, model


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a metric function's output, as floats."""
    out = {k: _to_float(v) for k, v in values.items()}
    return {k: v for k, v in out.items() if v is not None}


def task_mean(scalars: Mapping[str, float]) -> float:
    """One number per task for early stopping: the task's `mean_of_metrics` when its metric
    functions report it, else the mean of its metrics.

    Counts that are not scores (`invalid_predictions`) never enter the mean: more invalid
    predictions must not raise the value that picks the best checkpoint.

    Args:
      scalars: a task's metrics (`{"accuracy": 71.0, "invalid_predictions": 3, ...}`).

    Returns:
      The task's selection value (nan when it has no score).
    """
    if MEAN_KEY in scalars:
        return float(scalars[MEAN_KEY])
    scores = [v for k, v in scalars.items() if k != INVALID_KEY]
    return float(np.mean(scores)) if scores else float("nan")


@dataclasses.dataclass
class TaskOutputs:
    """A predictor's outputs for every example of one task (None: the task needs none).

    With `Evaluator.collect(..., members=True)` each array has a leading prompt axis N.

    Attributes:
      tokens: decoded tokens `[E, S]` (0 after EOS).
      scores: summed target log-likelihoods `[E]`.
      choices: rank-classification choices `[E]` (label indices).
    """

    tokens: np.ndarray | None = None
    scores: np.ndarray | None = None
    choices: np.ndarray | None = None

    def member(self, index: int) -> "TaskOutputs":
        """Prompt `index`'s outputs of per-prompt outputs."""
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return TaskOutputs(pick(self.tokens), pick(self.scores), pick(self.choices))


class Evaluator:
    """Evaluates params on every task of a mixture: seqio metrics, rank classification, a mean.

    The steps of `seqio.Evaluator` (which cannot cache tasks with the scalar `task_ids` feature of
    multi-task mixtures): decode, detokenize up to EOS, postprocess predictions and targets
    (`targets_pretokenized` when present), run the task's `predict_metric_fns`; its
    `score_metric_fns` get the targets' log-likelihoods.

    Example:
      evaluator = Evaluator("builtin_keyword", {"inputs": 64, "targets": 8}, model, 32)
      metrics = evaluator.evaluate(params, step)   # {"builtin_keyword/accuracy": ..., "mean": ...}
      value = select_metric(metrics)
    """

    def __init__(
        self,
        mixture_or_task_name: str,
        feature_lengths: Mapping[str, int],
        model: Any,
        batch_size: int,
        decode_method: str = "greedy",
        beam_size: int = 4,
        rank_classification: bool | None = None,
        split: str = "validation",
        num_examples: int | None = None,
        labels: ranking.Labels = None,
    ):
        """Caches the evaluation data of every sub-task.

        Args:
          mixture_or_task_name: a registered seqio task or mixture.
          feature_lengths: `{"inputs": T, "targets": S}` (TASK_FEATURE_LENGTHS).
          model: a `PromptModel`, or a predictor (`Predictor`, `ensemble.PromptEnsemble`).
          batch_size: B, examples per decoding batch (the last batch is padded).
          decode_method: "greedy" or "beam" (ignored when `model` is a predictor).
          beam_size: beams for "beam".
          rank_classification: True, False, or None to rank wherever the task's label strings
            are known (`rank_classification.labels_for`).
          split: the split to evaluate.
          num_examples: evaluate only the first examples of each task.
          labels: label strings to rank (LABELS): one list for every task, or `{task: list}`;
            default the `label_classes` each task binds into its postprocessor.

        Raises:
          ValueError: no sub-task has split `split` and metrics, or rank classification was
            requested for a task without labels.
        """
        if hasattr(model, "classify") and hasattr(model, "predict"):
            self.predictor = model
        else:
            self.predictor = Predictor(model, decode_method, beam_size)
        self.batch_size = batch_size
        self.feature_lengths = dict(feature_lengths)
        subtasks = seqio.get_subtasks(data.get_task_or_mixture(mixture_or_task_name))
        self.labels = {}
        self.tasks = {}
        for task in subtasks:
            ranked = ranking.labels_for(task, labels, rank_classification)
            if split in task.splits and (task.metric_fns or ranked is not None):
                self.tasks[task.name] = task
                self.labels[task.name] = ranked
        if not self.tasks:
            raise ValueError(
                f"{mixture_or_task_name!r} has no task with a {split!r} split and metric_fns; "
                "choose another split or add metric_fns to the task."
            )
        self._examples = {
            name: task_examples(task, self.feature_lengths, split, num_examples)
            for name, task in self.tasks.items()
        }

    @property
    def task_names(self) -> list[str]:
        """Names of the evaluated (sub-)tasks."""
        return list(self.tasks)

    def _run(self, fn: Callable[..., np.ndarray], params: Any, task_name: str, axis: int = 0):
        """`fn(params, batch)` over all examples of a task, the batches' real rows joined on the
        example axis: `[B, ...]` -> `[num_examples, ...]` (axis 0), or a predictor's per-prompt
        `[N, B, ...]` -> `[N, num_examples, ...]` (axis 1)."""
        outputs = []
        for batch, n in iterate_batches(self._examples[task_name][1], self.batch_size):
            check_task_ids(self.predictor, batch, f"task {task_name!r}")
            outputs.append(np.take(fn(params, batch), np.arange(n), axis=axis))
        return np.concatenate(outputs, axis=axis)

    def label_tokens(self, task_name: str) -> np.ndarray:
        """The task's label strings as targets `[C, S]`."""
        feature = self.tasks[task_name].output_features["targets"]
        return tokenize_labels(
            self.labels[task_name],
            feature.vocabulary,
            self.feature_lengths["targets"],
            feature.add_eos,
        )

    def rank_choices(self, params: Any, task_name: str) -> np.ndarray:
        """Rank-classification choice `[num_examples]` (label index) for every task example."""
        label_tokens = self.label_tokens(task_name)
        classify = lambda p, batch: self.predictor.classify(p, batch, label_tokens)  # noqa: E731
        return self._run(classify, params, task_name).astype(np.int64)

    def collect(
        self, params: Any, members: bool = False, decode_all: bool = False
    ) -> dict[str, TaskOutputs]:
        """Every task's outputs: what its metrics need, one pass per kind.

        Args:
          params: the full parameter tree.
          members: the predictor's per-prompt outputs (`PromptEnsemble.member_predictions`,
            `member_scores`, `member_choices`) instead of its own, each with a leading N axis.
          decode_all: decode every task (for writing predictions), not only those with
            predict metrics.

        Returns:
          `{task name: TaskOutputs}`.
        """
        p, axis = self.predictor, int(members)
        predict = p.member_predictions if members else p.predict
        score = p.member_scores if members else p.score
        classify = p.member_choices if members else p.classify
        out = {}
        for name, task in self.tasks.items():
            found = TaskOutputs()
            if task.predict_metric_fns or decode_all:
                found.tokens = self._run(predict, params, name, axis)
            if task.score_metric_fns:
                found.scores = self._run(score, params, name, axis)
            if self.labels[name] is not None:
                tokens = self.label_tokens(name)
                rank = lambda q, batch, t=tokens: classify(q, batch, t)  # noqa: E731
                found.choices = self._run(rank, params, name, axis).astype(np.int64)
            out[name] = found
        return out

    def task_metrics(self, task_name: str, outputs: TaskOutputs) -> dict[str, float]:
        """The task's own metric functions on decoded predictions and on target scores."""
        task = self.tasks[task_name]
        raw = self._examples[task_name][0]
        vocabulary = task.output_features["targets"].vocabulary
        targets = [
            task.postprocess_fn(target_text(ex, vocabulary), example=ex, is_target=True)
            for ex in raw
        ]
        out = {}
        if task.predict_metric_fns:
            predictions = [
                task.postprocess_fn(vocabulary.decode(t.tolist()), example=ex, is_target=False)
                for t, ex in zip(outputs.tokens, raw)
            ]
            for metric_fn in task.predict_metric_fns:
                out.update(_scalars(metric_fn(targets, predictions)))
        if task.predict_with_aux_metric_fns:
            logging.warning("Task %s: predict_with_aux metric_fns are not computed.", task_name)
        if task.score_metric_fns:
            for metric_fn in task.score_metric_fns:
                out.update(_scalars(metric_fn(targets, outputs.scores)))
        return out

    def metrics(
        self, outputs: Mapping[str, TaskOutputs], step: int | None = None
    ) -> dict[str, float]:
        """The metrics of collected outputs (`collect`, or one prompt's / the vote's of them).

        Returns:
          `{"<task>/<metric>": value}` for the task's metric_fns, `"<task>/rank_accuracy"`
          (percent) and `"<task>/rank_<metric>"` for classification tasks, and `"mean"`: the mean
          over tasks of each task's `task_mean` (its rank accuracy if it has no metric_fns).
        """
        metrics, task_means = {}, []
        for name, task in self.tasks.items():
            scalars = self.task_metrics(name, outputs[name])
            metrics.update({f"{name}/{k}": v for k, v in scalars.items()})
            if self.labels[name] is not None:
                raw = self._examples[name][0]
                vocabulary = task.output_features["targets"].vocabulary
                ranked = ranking.rank_metrics(
                    task,
                    self.labels[name],
                    outputs[name].choices,
                    [target_text(ex, vocabulary) for ex in raw],
                    raw,
                    _to_float,
                )
                metrics.update({f"{name}/{k}": v for k, v in ranked.items()})
                scalars = scalars or {"rank_accuracy": ranked["rank_accuracy"]}
            if scalars:
                task_means.append(task_mean(scalars))
        metrics["mean"] = float(np.mean(task_means)) if task_means else float("nan")
        logging.info("Step %s eval metrics: %s", step, metrics)
        return metrics

    def evaluate(self, params: Any, step: int | None = None) -> dict[str, float]:
        """Decodes, scores and rank-classifies every task; returns its metrics (`metrics`).

        Args:
          params: the full parameter tree (frozen + prompt).
          step: the training step (logged).
        """
        return self.metrics(self.collect(params), step)

    def examples(self, task_name: str) -> list[dict[str, Any]]:
        """The task's examples (task features, in evaluation order)."""
        return self._examples[task_name][0]


def select_metric(metrics: Mapping[str, float], name: str | None = None) -> float:
    """The value that picks the best checkpoint.

    Args:
      metrics: `Evaluator.evaluate` output.
      name: None for `"mean"` (the task's metric, or the mean of its metrics); a full key
        (`"taskless_glue_rte_v002/accuracy"`); or a metric name (`"accuracy"`) averaged over the
        tasks that report it.

    Returns:
      The selected value (higher is better unless the caller says otherwise).

    Raises:
      KeyError: no metric matches `name`; the message lists the available keys.
    """
    if name is None:
        name = "mean"
    if name in metrics:
        return float(metrics[name])
    matches = [v for k, v in metrics.items() if k.rsplit("/", 1)[-1] == name]
    if not matches:
        raise KeyError(f"No eval metric named {name!r}; available: {sorted(metrics)}.")
    return float(np.mean(matches))


def best_step(
    metrics_by_step: Mapping[int, Mapping[str, float]],
    name: str | None = None,
    mode: str = "max",
) -> int:
    """The step whose metrics are best (the earliest on ties), for early stopping.

    Args:
      metrics_by_step: `{step: Evaluator.evaluate output}`.
      name: the metric, as for `select_metric`.
      mode: "max" (accuracy, F1) or "min" (a loss).

    Returns:
      The best step.

    Raises:
      ValueError: `metrics_by_step` is empty or `mode` is unknown.
    """
    if not metrics_by_step:
        raise ValueError("No evaluated checkpoints to choose from; evaluate at least one step.")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
    sign = 1.0 if mode == "max" else -1.0
    steps = sorted(metrics_by_step)
    values = [sign * select_metric(metrics_by_step[s], name) for s in steps]
    return steps[int(np.argmax(values))]
