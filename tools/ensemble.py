"""Prompt ensembles: N tuned prompts of one task voting as one model (Lester et al. 2021, §6).

    python tools/ensemble.py runs/seed0 runs/seed1 runs/seed2 --output ensemble.md

Each source is a training run's MODEL_DIR (its latest exported prompt, or `--best`), a `.npy`
prompt [P, H] or a PEFT prompt-tuning adapter folder. The N prompts go into one `PromptBank` over
the shared frozen model and the batch is replicated N times
(`prompt_tuning.predict.ensemble.PromptEnsemble`), so one forward pass gives
every prompt's decodes, rank-classification choices and scores (`Evaluator.collect(...,
members=True)`). The ensemble's prediction is the majority vote of those outputs (ties: the
earliest prompt). Each prompt's own metrics are computed from the same outputs, through the same
`evaluation.Evaluator`, so its rows equal evaluating that prompt alone.

Printed and saved (`--output`, Markdown) in the layout of Lester et al.'s Table 3: one row per
prompt, then "Average" (mean over prompts), "Best" (the row of the best single prompt by the
task's metric, or the mean of its metrics, as training picks its best checkpoint) and
"Ensemble"; one column per metric of the task (`<task>/<metric>`, and `mean`). `--predictions`
writes one JSON line per example: every prompt's prediction, the ensemble's, and for
classification tasks the rank-classification choices too.

The frozen model, task, lengths and seed come from a run's config.gin (`--config_dir`, default
the first MODEL_DIR source): MODEL (its prompt replaced by the bank), INITIAL_CHECKPOINT_PATH
(`--checkpoint` overrides it), MIXTURE_OR_TASK_NAME (`--task`), TASK_FEATURE_LENGTHS,
RANDOM_SEED (the random frozen model of runs without a checkpoint). Every MODEL_DIR source must
have been trained on the same frozen model.

Letters: N prompts, B batch, S target length, C labels, P prompt length, H model dim.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if __package__ in (None, ""):  # run as `python tools/ensemble.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.analysis.tables import markdown_table  # noqa: E402
from prompt_tuning.model_dir import ModelDir, is_run, resolve_prompt  # noqa: E402
from prompt_tuning.predict import ensemble  # noqa: E402
from tools import _common  # noqa: E402

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


def _source_prompt(source: str, best: bool) -> pathlib.Path:
    """A source's prompt: the file (or PEFT adapter folder) itself, or MODEL_DIR's latest (or
    best) prompt."""
    path = pathlib.Path(source)
    if is_run(path):
        return resolve_prompt(model_dir=path, best=best)
    return resolve_prompt(prompt=path)


def _row_names(sources: Sequence[str]) -> list[str]:
    """Short row names: the folder or file stem, or the full path when those collide."""
    short = [pathlib.Path(s).stem if s.endswith(".npy") else pathlib.Path(s).name for s in sources]
    return short if len(set(short)) == len(short) else list(sources)


def _check_same_frozen_model(
    config_run: builder.RunConfig, sources: Sequence[str], checkpoint: str | None
) -> None:
    """Every MODEL_DIR source must use the frozen model of the config run.

    Raises:
      ToolError: naming the run whose INITIAL_CHECKPOINT_PATH (or RANDOM_SEED of a random frozen
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
        got = identity(_common.read_run_config(source))
        if got != want:
            raise _common.ToolError(
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
    from prompt_tuning.predict import inference
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="+", help="MODEL_DIRs or .npy prompts (two or more)")
    parser.add_argument("--best", action="store_true", help="each MODEL_DIR's prompts/best.npy")
    parser.add_argument("--config_dir", help="run whose config.gin gives the model (default: 1st)")
    parser.add_argument("--checkpoint", help="frozen T5 checkpoint (default: the config's)")
    parser.add_argument("--task", help="task or mixture (default: the config's)")
    parser.add_argument("--split", default="validation", help="split to evaluate")
    parser.add_argument("--num_examples", type=int, help="only the first examples of each task")
    parser.add_argument("--batch_size", type=int, help="examples per batch (default BATCH_SIZE)")
    parser.add_argument("--decode_method", default="greedy", choices=("greedy", "beam"))
    parser.add_argument("--output", help="Markdown file for the table")
    parser.add_argument("--predictions", help="JSON-lines file for the per-example predictions")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> EnsembleReport:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `EnsembleReport`.

    Raises:
      ToolError: fewer than two prompts, no config run, or runs of different frozen models.
    """
    from prompt_tuning.predict import (
        evaluation,
        inference,  # noqa: PLC0415
    )
    from prompt_tuning.train import data  # noqa: PLC0415

    args = parse_args(argv)
    if len(args.sources) < 2:
        raise _common.ToolError("An ensemble needs at least two prompts (MODEL_DIRs or .npy).")
    config_dir = args.config_dir or next((s for s in args.sources if is_run(s)), None)
    if config_dir is None:
        raise _common.ToolError(
            "Every source is a .npy prompt: pass --config_dir, a run whose config.gin defines the "
            "frozen model (MODEL, INITIAL_CHECKPOINT_PATH) and task."
        )
    config_run = _common.read_run_config(config_dir)
    _check_same_frozen_model(config_run, args.sources, args.checkpoint)
    task = args.task or config_run.task
    if task is None or config_run.task_feature_lengths is None:
        raise _common.ToolError(
            f"{config_dir}/config.gin names no MIXTURE_OR_TASK_NAME or TASK_FEATURE_LENGTHS; "
            "pass --task."
        )
    data.import_task_modules(config_run.mixture_or_task_module)
    paths = [_source_prompt(s, args.best) for s in args.sources]
    predictor, params = build(config_run, paths, args.checkpoint, args.decode_method)
    evaluator = evaluation.Evaluator(
        task,
        config_run.task_feature_lengths,
        predictor,
        args.batch_size or config_run.batch_size or 32,
        split=args.split,
        num_examples=args.num_examples,
    )
    outputs = evaluator.collect(params, members=True, decode_all=True)  # the one forward pass
    voted = evaluator.metrics({name: predictor.vote(o) for name, o in outputs.items()})
    members = [
        evaluator.metrics({name: o.member(i) for name, o in outputs.items()})
        for i in range(len(paths))
    ]
    average, best = summary(members)
    names = _row_names(args.sources)
    rows = {"Average": average, "Best": members[best], "Ensemble": voted}
    markdown = render(names, members, rows, f"{task} ({args.split})")
    print(markdown)
    if args.output:
        pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.output).write_text(markdown)
        print(f"Wrote {args.output}")
    records = predictions(evaluator, predictor, outputs)
    if args.predictions:
        inference.write_jsonl(iter(records), args.predictions)
        print(f"Wrote {len(records)} predictions to {args.predictions}")
    return EnsembleReport(names, paths, members, average, best, voted, records, markdown)


if __name__ == "__main__":
    _common.cli(main)
