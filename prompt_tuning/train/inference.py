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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import seqio

from prompt_tuning.t5 import decoding
from prompt_tuning.train import (
    checkpoints,
    data,
    ensemble,
    evaluation,
    optimizers,
    partitioning,
    prompt_files,
)
from prompt_tuning.train import rank_classification as ranking
from prompt_tuning.train.model import PromptModel

SCORE_KINDS = (None, "prediction", "target")


def _text(example: Mapping[str, Any], feature: str, vocabulary: seqio.Vocabulary) -> str:
    """An example's text: `<feature>_pretokenized`, else its decoded tokens."""
    raw = example.get(f"{feature}_pretokenized")
    if raw is not None:
        return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return vocabulary.decode([int(t) for t in example[feature]])


def _prediction_scores(
    predictor: evaluation.Predictor, params: Any, batch: evaluation.Batch, tokens: np.ndarray
) -> np.ndarray:
    """Log-likelihood `[B]` of the predicted sequences `tokens [B, S]` (up to their EOS)."""
    targets = tokens[:, : batch["decoder_target_tokens"].shape[1]]  # [B, S]
    scored = dict(batch)
    scored["decoder_target_tokens"] = targets
    scored["decoder_input_tokens"] = evaluation.shift_right(targets)
    scored["decoder_loss_weights"] = (targets > 0).astype(np.int32)
    return predictor.score(params, scored)


def predict_task(
    predictor: evaluation.Predictor,
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
      predictor: a `Predictor` (`evaluation.SinglePromptPredictor`, `ensemble.PromptEnsemble`).
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
    in_vocab = task.output_features["inputs"].vocabulary
    raw, model = evaluation.task_examples(task, feature_lengths, split, num_examples)
    if labels is not None:
        label_tokens = evaluation.tokenize_labels(
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
            example = raw[start + i]
            record = {
                "task": task.name,
                "inputs": _text(example, "inputs", in_vocab),
                "prediction": out_vocab.decode(tokens[i].tolist()),
            }
            if "targets" in example or "targets_pretokenized" in example:
                record["target"] = _text(example, "targets", out_vocab)
            if scores is not None:
                record["score"] = float(scores[i])
            yield record
        start += n


def write_jsonl(records: Iterator[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Writes one JSON object per line (UTF-8, non-ASCII kept); returns the number written."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
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


def as_prompt_model(model: Any) -> PromptModel:
    """`model` itself when it is a `PromptModel`, else `PromptModel(model)` (MODEL is a module)."""
    return model if isinstance(model, PromptModel) else PromptModel(model)


def read_prompt_file(
    path: str | os.PathLike, model: PromptModel
) -> np.ndarray | dict[str, np.ndarray]:
    """Reads a PROMPT_FILE and checks that it fits the model's prompt (`prompt_files`).

    Args:
      path: a `[P, H]` or `[N, P, H]` `.npy`, or a parameters `.npz`.
      model: the model whose prompt parameters it replaces.

    Returns:
      The prompt array (`[P, H]`, or `[N, P, H]` for a bank) for an array file, else the
      parameters `{path under encoder/prompt: array}` of a `.npz`.

    Raises:
      FileNotFoundError: no such file.
      PromptFileError (a ValueError): not a prompt file, or one of another form or shape than the
        model's prompt (both are named, with the gin file to use).
    """
    abstract = jax.eval_shape(lambda: nn.unbox(model.init_boxed(jax.random.key(0), 1, 1)))
    content = prompt_files.read_prompt_file(path)
    shapes = prompt_files.parameter_shapes(abstract)
    values = prompt_files.values_for(content, shapes, model.prompt, path)
    return values["prompt"] if isinstance(content, np.ndarray) else values


def _initial_params(
    model: PromptModel,
    task_feature_lengths: Mapping[str, int],
    initial_checkpoint_path: str | None,
    random_seed: int,
    trainable_params_regex: str,
    frozen_dtype: str | None,
    prompt_file: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainable, frozen) on the first device, with the trainer's RANDOM_SEED init key."""
    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    init_rng, _ = jax.random.split(jax.random.key(random_seed))
    return checkpoints.initial_params(
        model,
        mesh,
        init_rng,
        task_feature_lengths,
        initial_checkpoint_path,
        trainable_params_regex,
        frozen_dtype,
        prompt_file=prompt_file,
        allow_no_trainable=model.prompt is None,
    )


def load_frozen_params(
    model: PromptModel,
    task_feature_lengths: Mapping[str, int],
    initial_checkpoint_path: str | None = None,
    random_seed: int = 0,
    trainable_params_regex: str = optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX,
    frozen_dtype: str | None = None,
) -> dict[str, Any]:
    """The frozen parameters of a run alone, as `load_params` builds them (no prompt needed).

    Args:
      model: the run's `PromptModel`.
      task_feature_lengths: TASK_FEATURE_LENGTHS.
      initial_checkpoint_path: the frozen T5; None: the random model of RANDOM_SEED.
      random_seed: RANDOM_SEED.
      trainable_params_regex: TRAINABLE_PARAMS_REGEX (what is not frozen).
      frozen_dtype: FROZEN_DTYPE.

    Returns:
      The frozen parameter tree (arrays on the first device).

    Raises:
      FileNotFoundError: INITIAL_CHECKPOINT_PATH does not exist.
    """
    checkpoints.check_initial_checkpoint(initial_checkpoint_path)
    return _initial_params(
        model,
        task_feature_lengths,
        initial_checkpoint_path,
        random_seed,
        trainable_params_regex,
        frozen_dtype,
    )[1]


def load_params(
    model: PromptModel,
    task_feature_lengths: Mapping[str, int],
    initial_checkpoint_path: str | None = None,
    prompt_file: str | None = None,
    model_dir: str | None = None,
    checkpoint: str = "latest",
    random_seed: int = 0,
    trainable_params_regex: str = optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX,
    frozen_dtype: str | None = None,
) -> tuple[dict[str, Any], int | None]:
    """Full parameters for evaluation or inference, on the first device.

    The frozen weights are built as the trainer builds them (`checkpoints.initial_params` with the
    same RANDOM_SEED key), so a run without INITIAL_CHECKPOINT_PATH gets its random frozen model
    back.

    Args:
      model: the `PromptModel` (its prompt module as in training).
      task_feature_lengths: TASK_FEATURE_LENGTHS (shapes of the initialization batch).
      initial_checkpoint_path: the frozen T5 (INITIAL_CHECKPOINT_PATH); None: RANDOM_SEED init.
      prompt_file: a prompt `.npy` (PROMPT_FILE); wins over `model_dir`.
      model_dir: a training run's MODEL_DIR. Without it and without `prompt_file`, a model with no
        prompt (PROMPT=None) is the frozen checkpoint alone.
      checkpoint: "latest" or "best" checkpoint of `model_dir`.
      random_seed: RANDOM_SEED.
      trainable_params_regex: TRAINABLE_PARAMS_REGEX (what MODEL_DIR checkpoints hold).
      frozen_dtype: FROZEN_DTYPE, e.g. "bfloat16" (None: as stored), as in training.

    Returns:
      (params, step): step is the restored checkpoint's step, or None for a PROMPT_FILE or the
      frozen model alone.

    Raises:
      ValueError: a model with a prompt gets neither PROMPT_FILE nor MODEL_DIR, `checkpoint` is
        unknown, or the PROMPT_FILE's shape does not fit the model (both shapes are named).
      FileNotFoundError: a missing checkpoint, run or prompt file.
    """
    if not prompt_file and not model_dir and model.prompt is not None:
        raise ValueError(
            "Nothing to evaluate: set PROMPT_FILE (a .npy prompt) or MODEL_DIR (a training run), "
            "or PROMPT=None to evaluate the frozen model alone."
        )
    if checkpoint not in ("latest", "best"):
        raise ValueError(f"checkpoint must be 'latest' or 'best', got {checkpoint!r}.")
    checkpoints.check_initial_checkpoint(initial_checkpoint_path)
    if prompt_file:
        read_prompt_file(prompt_file, model)  # Names both forms or shapes when they differ.
    trainable, frozen = _initial_params(
        model,
        task_feature_lengths,
        initial_checkpoint_path,
        random_seed,
        trainable_params_regex,
        frozen_dtype,
        prompt_file or None,
    )
    params = optimizers.merge_params(trainable, frozen)
    if prompt_file or not model_dir:
        return params, None
    step, trained = checkpoints.load_trained_params(model_dir, best=checkpoint == "best")
    return optimizers.merge_params(trained, params), step


def make_predictor(
    model: PromptModel,
    params: dict[str, Any],
    prompt_paths: Sequence[str] = (),
    decode_method: str = "greedy",
    beam_size: int = 4,
) -> tuple[evaluation.Predictor, dict[str, Any]]:
    """A single-prompt predictor, or a prompt ensemble when several prompt files are given.

    Args:
      model: the plain-prompt `PromptModel`.
      params: its full parameters (the frozen weights are reused for the ensemble).
      prompt_paths: two or more `.npy` prompts `[P, H]` make an ensemble over one frozen model.
      decode_method: "greedy" or "beam".
      beam_size: beams for "beam".

    Returns:
      (predictor, params to call it with).
    """
    if len(prompt_paths) < 2:
        return evaluation.SinglePromptPredictor(model, decode_method, beam_size), params
    prompts = [read_prompt_file(path, model) for path in prompt_paths]
    bank = ensemble.bank_prompt(len(prompts), prompts[0].shape[0])
    bank_model = PromptModel(model.module.clone(prompt=bank))
    predictor = ensemble.PromptEnsemble(bank_model, len(prompts), decode_method, beam_size)
    return predictor, ensemble.bank_params(params, prompts)


def _restore(
    model: Any, task_feature_lengths: Mapping[str, int], options: Mapping[str, Any]
) -> tuple[evaluation.Predictor, dict[str, Any], int | None]:
    """Parameters and predictor for one PROMPT_FILE, a list of them (ensemble) or a MODEL_DIR."""
    model = as_prompt_model(model)
    prompt_file = options["prompt_file"]
    files = [prompt_file] if isinstance(prompt_file, str) else list(prompt_file or ())
    params, step = load_params(
        model,
        task_feature_lengths,
        options["initial_checkpoint_path"],
        files[0] if files else None,
        options["model_dir"],
        options["checkpoint"],
        options["random_seed"],
        frozen_dtype=options["frozen_dtype"],
    )
    predictor, params = make_predictor(
        model, params, files, options["decode_method"], options["beam_size"]
    )
    return predictor, params, step


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

    Returns:
      The metrics of `evaluation.Evaluator.evaluate`.
    """
    data.import_task_modules(mixture_or_task_module)
    data.get_task_or_mixture(mixture_or_task_name)
    options = dict(locals())
    predictor, params, step = _restore(model, task_feature_lengths, options)
    evaluator = evaluation.Evaluator(
        mixture_or_task_name,
        task_feature_lengths,
        predictor,
        batch_size,
        rank_classification=rank_classification,
        split=split,
        num_examples=num_examples,
        labels=labels,
    )
    metrics = evaluator.evaluate(params, step)
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value:.4f}")
    output_dir = output_dir or (os.path.join(model_dir, "eval") if model_dir else None)
    if output_dir:
        path = pathlib.Path(output_dir) / f"metrics_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"step": step, "metrics": metrics}, indent=1))
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
      labels: label strings for `rank_classification` (one list, or `{task: list}`); default the
        labels each task binds into its postprocessor.

    Returns:
      The number of examples written.
    """
    data.import_task_modules(mixture_or_task_module)
    provider = data.get_task_or_mixture(mixture_or_task_name)
    options = dict(locals())
    predictor, params, _ = _restore(model, task_feature_lengths, options)

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

    count = write_jsonl(records(), output_path)
    print(f"Wrote {count} predictions to {output_path}")
    return count
