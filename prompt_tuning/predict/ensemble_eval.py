"""Evaluating a prompt ensemble and each of its prompts in one pass (Lester et al. 2021, §6).

`build` puts N prompts into one `PromptBank` over the run's frozen model
(`ensemble.PromptEnsemble`); `evaluate` runs the task once (`Evaluator.collect(..., members=True)`)
and computes every prompt's metrics, their average, the best prompt (`evaluation.select_metric`)
and the majority vote's, `render` lays them out as Lester et al.'s Table 3 and `predictions`
lists every prompt's and the ensemble's prediction per example (`tools/ensemble.py`).

Letters: N prompts, B batch, S target length, C labels, P prompt length, H model dim, E examples.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from prompt_tuning.analysis.tables import markdown_table
from prompt_tuning.model_dir import ModelDir, is_run, resolve_prompt
from prompt_tuning.predict import ensemble

if TYPE_CHECKING:
    from prompt_tuning.train import builder

SUMMARY_ROWS = ("Average", "Best", "Ensemble")


@dataclasses.dataclass
class EnsembleReport:
    """What `main` returns.

    Attributes:
      names: the N prompts' row names.
      prompt_paths: the N `.npy` prompts.
      members: each prompt's metrics (`Evaluator.evaluate` output).
      average: the mean over prompts of each metric.
      best: the index of the best single prompt (by `evaluation.select_metric`).
      ensemble: the ensemble's metrics.
      predictions: per example, every prompt's prediction and the ensemble's (see `--predictions`).
      markdown: the printed table.
    """

    names: list[str]
    prompt_paths: list[pathlib.Path]
    members: list[dict[str, float]]
    average: dict[str, float]
    best: int
    ensemble: dict[str, float]
    predictions: list[dict[str, Any]]
    markdown: str


class EnsembleError(ValueError):
    """An ensemble's prompts cannot be evaluated together; the message names why and the fix."""


def source_prompt(source: str, best: bool) -> pathlib.Path:
    """A source's prompt: the file (or PEFT adapter folder) itself, or MODEL_DIR's latest (or
    best) prompt."""
    path = pathlib.Path(source)
    if is_run(path):
        return resolve_prompt(model_dir=path, best=best)
    return resolve_prompt(prompt=path)


def row_names(sources: Sequence[str]) -> list[str]:
    """Short row names: the folder or file stem, or the full path when those collide."""
    short = [pathlib.Path(s).stem if s.endswith(".npy") else pathlib.Path(s).name for s in sources]
    return short if len(set(short)) == len(short) else list(sources)


def check_same_frozen_model(
    config_run: builder.RunConfig,
    sources: Sequence[str],
    checkpoint: str | None,
    read_run_config: Callable[[str], builder.RunConfig],
) -> None:
    """Every MODEL_DIR source must use the frozen model of the config run.

    Args:
      config_run: the run whose config gives the frozen model.
      sources: the ensemble's sources (MODEL_DIRs with a config.gin are checked).
      checkpoint: the frozen checkpoint the user named (then nothing is checked).
      read_run_config: a MODEL_DIR's run config (`gin_utils.read_run_config`).

    Raises:
      EnsembleError: naming the run whose INITIAL_CHECKPOINT_PATH (or RANDOM_SEED of a random frozen
        model) differs.
    """
    if checkpoint is not None:
        return  # The user names the frozen model explicitly.
    identity = lambda run: (  # noqa: E731
        run.initial_checkpoint_path,
        run.random_seed if run.initial_checkpoint_path is None else None,
    )
    want = identity(config_run)
    for source in sources:
        if not ModelDir(source).has_config():
            continue
        got = identity(read_run_config(source))
        if got != want:
            raise EnsembleError(
                f"{source} was trained on another frozen model (INITIAL_CHECKPOINT_PATH, "
                f"RANDOM_SEED) = {got} than {config_run.model_dir} {want}: an ensemble shares one "
                "frozen model. Pass --checkpoint to force one."
            )


def build(
    config_run: builder.RunConfig,
    prompt_paths: Sequence[pathlib.Path],
    checkpoint: str | None = None,
    decode_method: str = "greedy",
) -> tuple[ensemble.PromptEnsemble, dict[str, Any]]:
    """The N-prompt ensemble over the run's frozen model, and its parameters.

    Args:
      config_run: the run whose config gives MODEL, INITIAL_CHECKPOINT_PATH and RANDOM_SEED.
      prompt_paths: the N `.npy` prompts [P, H].
      checkpoint: a frozen checkpoint overriding INITIAL_CHECKPOINT_PATH.
      decode_method: "greedy" or "beam".

    Returns:
      `(predictor, params)`: params hold the frozen weights and the bank `[N, P, H]`.

    Raises:
      ValueError: the prompts do not fit the model or differ in shape (shapes named).
    """
    from prompt_tuning import prompts  # noqa: PLC0415
    from prompt_tuning.predict import inference  # noqa: PLC0415
    from prompt_tuning.train import prompt_files  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    length = prompt_files.load_prompt_npy(prompt_paths[0]).shape[0]
    module = config_run.model.clone(prompt=prompts.Prompt(length=length))
    model = PromptModel(module)
    params, _ = inference.load_params(
        model,
        config_run.task_feature_lengths or {},
        checkpoint or config_run.initial_checkpoint_path,
        prompt_file=str(prompt_paths[0]),
        random_seed=config_run.random_seed,
        trainable_params_regex=config_run.trainable_params_regex,
        frozen_dtype=config_run.frozen_dtype,
    )
    table = [inference.read_prompt_file(path, model) for path in prompt_paths]
    bank_model = PromptModel(module.clone(prompt=ensemble.bank_prompt(len(table), length)))
    predictor = ensemble.PromptEnsemble(bank_model, len(table), decode_method)
    return predictor, ensemble.bank_params(params, table)


def summary(members: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], int]:
    """The mean of each metric over the prompts, and the index of the best prompt.

    The best prompt has the highest `evaluation.select_metric` value (the task's metric, or the
    mean of its metrics: what picks the best checkpoint in training); the earliest on ties.
    """
    from prompt_tuning.predict import evaluation  # noqa: PLC0415

    average = {k: float(np.mean([m[k] for m in members])) for k in members[0]}
    values = [evaluation.select_metric(m) for m in members]
    return average, int(np.argmax(values))


def render(
    names: Sequence[str],
    members: Sequence[Mapping[str, float]],
    rows: Mapping[str, Mapping[str, float]],
    title: str,
) -> str:
    """Lester et al.'s Table 3 layout: prompts, Average, Best, Ensemble by metric."""
    keys = sorted(k for k in members[0] if k != "mean") + (["mean"] if "mean" in members[0] else [])
    table = [[name, *(f"{m[k]:.2f}" for k in keys)] for name, m in zip(names, members)]
    table += [[name, *(f"{rows[name][k]:.2f}" for k in keys)] for name in SUMMARY_ROWS]
    return f"# Prompt ensemble: {title}\n\n" + markdown_table(["prompt", *keys], table)


def predictions(
    evaluator: Any, predictor: ensemble.PromptEnsemble, outputs: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every prompt's and the ensemble's predictions per example, from the per-prompt outputs.

    Args:
      evaluator: the `evaluation.Evaluator` that collected `outputs`.
      predictor: the ensemble (its vote).
      outputs: `evaluator.collect(params, members=True, decode_all=True)`.

    Returns:
      One record per example: `task`, `inputs`, `target`, `predictions` (N decoded texts),
      `ensemble` (the voted text) and, for classification tasks, `rank_predictions` and
      `rank_ensemble` (the labels chosen by rank classification).
    """
    from prompt_tuning.predict import inference  # noqa: PLC0415

    out = []
    for name, task in evaluator.tasks.items():
        voted = predictor.vote(outputs[name])
        kinds = {"": (outputs[name].tokens, voted.tokens)}  # [N, E, S], [E, S]
        if evaluator.labels[name] is not None:
            labels = evaluator.label_tokens(name)  # [C, S]
            kinds["rank_"] = (labels[outputs[name].choices], labels[voted.choices])
        for i, example in enumerate(evaluator.examples(name)):
            text = functools.partial(inference.record, task, example)  # tokens -> record
            record = {k: v for k, v in text(voted.tokens[i]).items() if k != "prediction"}
            for prefix, (each, vote) in kinds.items():
                record[f"{prefix}predictions"] = [text(member[i])["prediction"] for member in each]
                record[f"{prefix}ensemble"] = text(vote[i])["prediction"]
            out.append(record)
    return out


def evaluate(
    config_run: builder.RunConfig,
    sources: Sequence[str],
    prompt_paths: Sequence[pathlib.Path],
    task: str,
    *,
    checkpoint: str | None = None,
    decode_method: str = "greedy",
    batch_size: int | None = None,
    split: str = "validation",
    num_examples: int | None = None,
) -> EnsembleReport:
    """Evaluates the ensemble of `prompt_paths` and each prompt on `task` in one forward pass.

    Args:
      config_run: the run whose config gives MODEL, the frozen model, lengths and BATCH_SIZE.
      sources: the sources the prompts came from (the rows' names).
      prompt_paths: the N prompts (`source_prompt`).
      task: the task or mixture (its modules imported).
      checkpoint: a frozen checkpoint overriding INITIAL_CHECKPOINT_PATH.
      decode_method: "greedy" or "beam".
      batch_size: examples per batch (default the run's BATCH_SIZE, else 32).
      split: the split evaluated.
      num_examples: only the first examples of each task.

    Returns:
      The `EnsembleReport` (its `markdown` is the table).
    """
    from prompt_tuning.predict import evaluation  # noqa: PLC0415

    predictor, params = build(config_run, prompt_paths, checkpoint, decode_method)
    evaluator = evaluation.Evaluator(
        task,
        config_run.task_feature_lengths,
        predictor,
        batch_size or config_run.batch_size or 32,
        split=split,
        num_examples=num_examples,
    )
    outputs = evaluator.collect(params, members=True, decode_all=True)  # the one forward pass
    voted = evaluator.metrics({name: predictor.vote(o) for name, o in outputs.items()})
    members = [
        evaluator.metrics({name: o.member(i) for name, o in outputs.items()})
        for i in range(len(prompt_paths))
    ]
    average, best = summary(members)
    names = row_names(sources)
    rows = {"Average": average, "Best": members[best], "Ensemble": voted}
    markdown = render(names, members, rows, f"{task} ({split})")
    records = predictions(evaluator, predictor, outputs)
    return EnsembleReport(
        names, list(prompt_paths), members, average, best, voted, records, markdown
    )
