"""Running a prompt-tuned T5: restoring its parameters, writing predictions, evaluation runs.

Parameters come from a frozen checkpoint (INITIAL_CHECKPOINT_PATH; without one the frozen model is
re-initialized from RANDOM_SEED, as the trainer does) plus either a prompt `.npy` (PROMPT_FILE, the
original prompt_eval flow; several files make a prompt ensemble) or the latest/best checkpoint
of a training run (MODEL_DIR). `infer` writes one JSON object per example:
`{"task": ..., "inputs": text, "prediction": text, "target": text (when the task has targets),
"score": float (when asked)}`, in dataset order, task after task for a mixture. `evaluate` runs
`evaluation.Evaluator` and writes its metrics as JSON.

Letters: B batch, T input length, S target length.
"""

import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from prompt_tuning.faults.batches import stop_at_batches
from prompt_tuning.model_dir import ModelDir, eval_metrics_path, write_atomic
from prompt_tuning.parallel import distributed, partitioning
from prompt_tuning.predict import evaluation, restore
from prompt_tuning.predict import rank_classification as ranking
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.predict.restore import (  # noqa: F401 (re-exported)
    as_prompt_model,
    load_frozen_params,
    load_params,
    make_predictor,
    read_prompt_file,
)
from prompt_tuning.t5 import decoding
from prompt_tuning.train import data

SCORE_KINDS = (None, "prediction", "target")


def _text(example: Mapping[str, Any], feature: str, vocabulary: seqio.Vocabulary) -> str:
    """An example's text: `<feature>_pretokenized`, else its decoded tokens."""
    raw = example.get(f"{feature}_pretokenized")
    if raw is not None:
        return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return vocabulary.decode([int(t) for t in example[feature]])


def _prediction_scores(
    predictor: Predictor, params: Any, batch: ranking.Batch, tokens: np.ndarray
) -> np.ndarray:
    """Log-likelihood `[B]` of the predicted sequences `tokens [B, S]` (up to their EOS)."""
    targets = tokens[:, : batch["decoder_target_tokens"].shape[1]]  # [B, S]
    scored = dict(batch)
    scored["decoder_target_tokens"] = targets
    scored["decoder_input_tokens"] = ranking.shift_right(targets)
    scored["decoder_loss_weights"] = (targets > 0).astype(np.int32)
    return predictor.score(params, scored)


def record(task: seqio.Task, example: Mapping[str, Any], tokens: np.ndarray) -> dict[str, Any]:
    """One example's JSON record without a score: task, inputs, prediction (the text of
    `tokens [S]`, up to EOS) and target (when the example has one)."""
    out_vocab = task.output_features["targets"].vocabulary
    out = {
        "task": task.name,
        "inputs": _text(example, "inputs", task.output_features["inputs"].vocabulary),
        "prediction": out_vocab.decode(tokens.tolist()),
    }
    if "targets" in example or "targets_pretokenized" in example:
        out["target"] = _text(example, "targets", out_vocab)
    return out


def predict_task(
    predictor: Predictor,
    params: Any,
    task: seqio.Task,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    split: str = "validation",
    num_examples: int | None = None,
    score: str | None = None,
    labels: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Predicts every example of one task.

    Args:
      predictor: a `Predictor`, or an `ensemble.PromptEnsemble` (its voted predictions).
      params: the full parameter tree.
      task: the seqio task.
      feature_lengths: `{"inputs": T, "targets": S}`.
      batch_size: B.
      split: the split to read.
      num_examples: only the first examples.
      score: None; "prediction" for the summed log-likelihood of the decoded prediction; or
        "target" for that of the example's target.
      labels: when given, predict by rank classification over these label strings instead of
        decoding (the prediction is the best label).

    Yields:
      One record per example (see the module docstring).

    Raises:
      ValueError: `score` is not one of None, "prediction", "target".
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}.")
    out_vocab = task.output_features["targets"].vocabulary
    raw, model = evaluation.task_examples(task, feature_lengths, split, num_examples)
    if labels is not None:
        label_tokens = ranking.tokenize_labels(
            labels, out_vocab, feature_lengths["targets"], task.output_features["targets"].add_eos
        )
    start = 0
    for batch, n in evaluation.iterate_batches(model, batch_size):
        evaluation.check_task_ids(predictor, batch, f"task {task.name!r}")
        if labels is not None:
            tokens = label_tokens[predictor.classify(params, batch, label_tokens)]  # [B, S]
        else:
            tokens = predictor.predict(params, batch)  # [B, S]
            tokens = np.asarray(decoding.pad_after_eos(tokens, out_vocab.eos_id))
        scores = None
        if score == "prediction":
            scores = _prediction_scores(predictor, params, batch, tokens)
        elif score == "target":
            scores = predictor.score(params, batch)
        for i in range(n):
            out = record(task, raw[start + i], tokens[i])
            if scores is not None:
                out["score"] = float(scores[i])
            yield out
        start += n


def write_jsonl(records: Iterator[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Writes one JSON object per line (UTF-8, non-ASCII kept); returns the number written.

    The lines go to a temporary file next to `path`, renamed over it once every record is
    written: an interrupted run (an error, a stop signal) leaves no partial file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as f:
        try:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(f.name, 0o666 & ~umask)  # as `open` would have made it (the temporary file is 0600)
    os.replace(f.name, path)
    return count


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a file of one JSON object per line (`write_jsonl`'s, or a run's metrics.jsonl).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a line is not JSON (the file and line are named).
    """
    records = []
    with pathlib.Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number} is not a JSON object ({error.msg}): {line[:80]!r}."
                ) from None
    return records


def _restore_config(
    prompt_file: str | Sequence[str] | None,
    model_dir: str | None,
    checkpoint: str,
    initial_checkpoint_path: str | None,
    random_seed: int,
    frozen_dtype: str | None,
    num_partitions: int,
    model_parallel_submesh: Sequence[int] | None,
    decode_method: str,
    beam_size: int,
) -> restore.RestoreConfig:
    """The typed `RestoreConfig` of `evaluate`'s and `infer`'s gin-bound arguments."""
    return restore.RestoreConfig(
        prompt_files=restore.prompt_file_list(prompt_file),
        model_dir=model_dir,
        checkpoint=checkpoint,
        initial_checkpoint_path=initial_checkpoint_path,
        random_seed=random_seed,
        frozen_dtype=frozen_dtype,
        mesh=partitioning.MeshConfig(
            num_partitions,
            None if model_parallel_submesh is None else tuple(model_parallel_submesh),
        ),
        decode_method=decode_method,
        beam_size=beam_size,
    )


def evaluate(
    model: Any,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int = 32,
    initial_checkpoint_path: str | None = None,
    prompt_file: str | Sequence[str] | None = None,
    model_dir: str | None = None,
    checkpoint: str = "latest",
    output_dir: str | None = None,
    split: str = "validation",
    num_examples: int | None = None,
    decode_method: str = "greedy",
    beam_size: int = 4,
    rank_classification: bool | None = None,
    random_seed: int = 0,
    frozen_dtype: str | None = None,
    mixture_or_task_module: str | Sequence[str] | None = None,
    labels: ranking.Labels = None,
    num_partitions: int = 1,
    model_parallel_submesh: Sequence[int] | None = None,
) -> dict[str, float]:
    """Evaluates a prompt (or a prompt ensemble) on a split: `python -m prompt_tuning.eval`.

    Args:
      model: MODEL, the `EncoderDecoder` with its prompt (or a `PromptModel`).
      mixture_or_task_name: MIXTURE_OR_TASK_NAME.
      task_feature_lengths: TASK_FEATURE_LENGTHS.
      batch_size: BATCH_SIZE.
      initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (None: RANDOM_SEED frozen model).
      prompt_file: PROMPT_FILE, or a list of them for a prompt ensemble (majority vote).
      model_dir: MODEL_DIR of a training run (used when there is no PROMPT_FILE).
      checkpoint: "latest" or "best" checkpoint of MODEL_DIR.
      output_dir: where to write `metrics_<split>.json` (default MODEL_DIR/eval; None: no file).
      split: the split to evaluate.
      num_examples: only the first examples of each task.
      decode_method: "greedy" or "beam".
      beam_size: beams for "beam".
      rank_classification: see `evaluation.Evaluator`.
      random_seed: RANDOM_SEED.
      frozen_dtype: FROZEN_DTYPE (None: frozen weights as stored).
      mixture_or_task_module: MIXTURE_OR_TASK_MODULE, imported first (None: the tasks are
        registered already).
      labels: label strings to rank (one list, or `{task: list}`); default the labels each task
        binds into its postprocessor (`rank_classification.labels_for`).
      num_partitions: NUM_PARTITIONS ("model" mesh axis), as in training.
      model_parallel_submesh: T5X's TPU block for the model axis instead.

    Returns:
      The metrics of `evaluation.Evaluator.evaluate` (on every process; the primary one prints
      and writes them).

    Raises:
      faults.Stopped: SIGTERM/SIGINT stopped the run between batches; nothing was written.
    """
    data.import_task_modules(mixture_or_task_module)
    data.get_task_or_mixture(mixture_or_task_name)
    source = _restore_config(
        prompt_file, model_dir, checkpoint, initial_checkpoint_path, random_seed, frozen_dtype,
        num_partitions, model_parallel_submesh, decode_method, beam_size,
    )  # fmt: skip
    predictor, params, step = restore.restore(model, task_feature_lengths, source)
    evaluator = evaluation.Evaluator(
        mixture_or_task_name,
        task_feature_lengths,
        predictor,
        restore.batch_size_for(batch_size, params),
        rank_classification=rank_classification,
        split=split,
        num_examples=num_examples,
        labels=labels,
    )
    with stop_at_batches("evaluation"):
        metrics = evaluator.evaluate(params, step)
    if not distributed.is_primary():
        return metrics
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value:.4f}")
    output_dir = output_dir or (ModelDir(model_dir).eval_dir if model_dir else None)
    if output_dir:
        path = eval_metrics_path(output_dir, split)
        record = json.dumps({"step": step, "metrics": metrics}, indent=1).encode()
        write_atomic(path, record, "the evaluation metrics")
        logging.info("Wrote %s", path)
    return metrics


def infer(
    model: Any,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    output_path: str,
    batch_size: int = 32,
    initial_checkpoint_path: str | None = None,
    prompt_file: str | Sequence[str] | None = None,
    model_dir: str | None = None,
    checkpoint: str = "latest",
    split: str = "validation",
    num_examples: int | None = None,
    decode_method: str = "greedy",
    beam_size: int = 4,
    score: str | None = None,
    rank_classification: bool = False,
    random_seed: int = 0,
    frozen_dtype: str | None = None,
    mixture_or_task_module: str | Sequence[str] | None = None,
    labels: ranking.Labels = None,
    num_partitions: int = 1,
    model_parallel_submesh: Sequence[int] | None = None,
) -> int:
    """Writes predictions as JSON lines: `python -m prompt_tuning.infer`.

    Args:
      model: MODEL, the `EncoderDecoder` with its prompt (or a `PromptModel`).
      mixture_or_task_name: MIXTURE_OR_TASK_NAME (every sub-task of a mixture, in order).
      task_feature_lengths: TASK_FEATURE_LENGTHS.
      output_path: the `.jsonl` file to write.
      batch_size: BATCH_SIZE.
      initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (None: RANDOM_SEED frozen model).
      prompt_file: PROMPT_FILE, or a list of them for a prompt ensemble.
      model_dir: MODEL_DIR of a training run (used when there is no PROMPT_FILE).
      checkpoint: "latest" or "best" checkpoint of MODEL_DIR.
      split: the split to read.
      num_examples: only the first examples of each task.
      decode_method: "greedy" or "beam".
      beam_size: beams for "beam".
      score: None, "prediction" or "target" (see `predict_task`).
      rank_classification: predict the best label string of classification tasks instead of
        decoding.
      random_seed: RANDOM_SEED.
      frozen_dtype: FROZEN_DTYPE (None: frozen weights as stored).
      mixture_or_task_module: MIXTURE_OR_TASK_MODULE, imported first (None: the tasks are
        registered already).
      labels: label strings to rank (one list, or `{task: list}`); default the labels each task
        binds into its postprocessor (`rank_classification.labels_for`).
      num_partitions: NUM_PARTITIONS ("model" mesh axis), as in training.
      model_parallel_submesh: T5X's TPU block for the model axis instead.

    Returns:
      The number of examples written (by the primary process; every process runs the model on
      every batch, and counts the same).

    Raises:
      faults.Stopped: SIGTERM/SIGINT stopped the run between batches; `output_path` was not
        written (predictions go to a temporary file renamed when complete).
    """
    data.import_task_modules(mixture_or_task_module)
    provider = data.get_task_or_mixture(mixture_or_task_name)
    source = _restore_config(
        prompt_file, model_dir, checkpoint, initial_checkpoint_path, random_seed, frozen_dtype,
        num_partitions, model_parallel_submesh, decode_method, beam_size,
    )  # fmt: skip
    predictor, params, _ = restore.restore(model, task_feature_lengths, source)
    batch_size = restore.batch_size_for(batch_size, params)

    def records() -> Iterator[dict[str, Any]]:
        for task in seqio.get_subtasks(provider):
            ranked = ranking.labels_for(task, labels) if rank_classification else None
            yield from predict_task(
                predictor,
                params,
                task,
                task_feature_lengths,
                batch_size,
                split,
                num_examples,
                score,
                ranked,
            )

    with stop_at_batches("inference"):
        if not distributed.is_primary():
            return sum(1 for _ in records())  # the same sharded computations, nothing written
        count = write_jsonl(records(), output_path)
    print(f"Wrote {count} predictions to {output_path}")
    return count
