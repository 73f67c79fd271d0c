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
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/ensemble.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.model_dir import is_run  # noqa: E402
from prompt_tuning.predict import ensemble_eval  # noqa: E402
from prompt_tuning.train import gin_utils  # noqa: E402
from tools import _common  # noqa: E402


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


def main(argv: Sequence[str] | None = None) -> ensemble_eval.EnsembleReport:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `ensemble_eval.EnsembleReport`.

    Raises:
      ToolError: fewer than two prompts, no config run, or runs of different frozen models.
    """
    from prompt_tuning.predict import inference  # noqa: PLC0415
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
    config_run = gin_utils.read_run_config(config_dir)
    ensemble_eval.check_same_frozen_model(
        config_run, args.sources, args.checkpoint, gin_utils.read_run_config
    )
    task = args.task or config_run.task
    if task is None or config_run.task_feature_lengths is None:
        raise _common.ToolError(
            f"{config_dir}/config.gin names no MIXTURE_OR_TASK_NAME or TASK_FEATURE_LENGTHS; "
            "pass --task."
        )
    data.import_task_modules(config_run.mixture_or_task_module)
    paths = [ensemble_eval.source_prompt(s, args.best) for s in args.sources]
    report = ensemble_eval.evaluate(
        config_run,
        args.sources,
        paths,
        task,
        checkpoint=args.checkpoint,
        decode_method=args.decode_method,
        batch_size=args.batch_size,
        split=args.split,
        num_examples=args.num_examples,
    )
    print(report.markdown)
    if args.output:
        pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.output).write_text(report.markdown)
        print(f"Wrote {args.output}")
    if args.predictions:
        inference.write_jsonl(iter(report.predictions), args.predictions)
        print(f"Wrote {len(report.predictions)} predictions to {args.predictions}")
    return report


if __name__ == "__main__":
    _common.cli(main)
