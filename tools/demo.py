r"""The demo: a prompt makes a frozen tiny T5 do a task it never saw without its text prefix.

Trains `gin_configs/runs/demo.gin` (Lester et al. 2021's recipe: class-label init, their Adafactor
at a constant rate, 0.03 for this tiny model; see the gin file) on `builtin_sentiment` with the
embedded tiny pretrained T5 frozen, then evaluates
the validation split three ways and prints a before/after table:

1. the frozen model with no prompt on the unprefixed inputs (what the prompt starts from),
2. the frozen model with the trained prompt,
3. the frozen model with the text prefix `sentiment: ` and no prompt (the ceiling: the inputs it
   was pretrained on).

Accuracy is reported both from greedy decoding (an invalid prediction counts as wrong) and from
rank classification over the label strings (chance = 1 / number of labels). The run stays in
`--model_dir` (checkpoints, prompts/step_N.npy, metrics.jsonl, config.gin), which
`python -m prompt_tuning.eval` and the tools in tools/ accept; the table is also written to
`<model_dir>/demo.md` and `demo.json`. `make demo` runs:

  python tools/demo.py --model_dir runs/demo
"""

import argparse
import json
import os
import sys
import time

import gin
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prompt_tuning.model_dir import ModelDir, write_atomic  # noqa: E402
from prompt_tuning.predict import inference  # noqa: E402
from prompt_tuning.train import gin_utils, trainer  # noqa: E402

TASK = "builtin_sentiment"
MODEL_GIN = "gin_configs/models/t5_1_1_tiny_pretrained.gin"
PROMPT_GIN = "gin_configs/prompts/prompt_tuning_class_labels.gin"
EVAL_GIN = "gin_configs/runs/prompt_eval.gin"
DEMO_MD, DEMO_JSON = "demo.md", "demo.json"  # the table, written into the run's MODEL_DIR


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (see --help)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", default="runs/demo", help="Where the run is written.")
    parser.add_argument(
        "--train_steps",
        type=int,
        default=None,
        help="TRAIN_STEPS, absolute as in T5X: the tiny T5 checkpoint is at step 2,500, so "
        "demo.gin's 3,500 trains 1,000 steps.",
    )
    parser.add_argument(
        "--num_examples", type=int, default=None, help="Validation examples (default: all 500)."
    )
    parser.add_argument(
        "--gin", action="append", default=[], help="Extra --gin.NAME=VALUE bindings for training."
    )
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> dict[str, object]:
    """Runs the demo's training through the normal gin entry point (resumes if interrupted).

    Returns:
      The run's PROMPT_LENGTH, TASK_FEATURE_LENGTHS and ACTIVATION_DTYPE, for the evaluations.
    """
    argv = ["--gin_file=gin_configs/runs/demo.gin", f"--gin.MODEL_DIR='{args.model_dir}'"]
    if args.train_steps is not None:
        argv.append(f"--gin.TRAIN_STEPS={args.train_steps}")
    argv += [f"--gin.{binding}" for binding in args.gin]
    gin.clear_config()
    gin_utils.run_main(trainer.train, argv, ("MODEL_DIR",))
    names = ("PROMPT_LENGTH", "TASK_FEATURE_LENGTHS", "ACTIVATION_DTYPE")
    return {name: gin.query_parameter(f"%{name}") for name in names}


def evaluate(
    task: str, with_prompt: bool, args: argparse.Namespace, run: dict[str, object]
) -> dict[str, float]:
    """Metrics of the frozen model on `task`'s validation split, with or without the prompt."""
    argv = [
        f"--gin_file={MODEL_GIN}",
        f"--gin_file={PROMPT_GIN}",
        f"--gin_file={EVAL_GIN}",
        f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
        f"--gin.TASK_FEATURE_LENGTHS={run['TASK_FEATURE_LENGTHS']!r}",
        f"--gin.PROMPT_LENGTH={run['PROMPT_LENGTH']}",
        f"--gin.ACTIVATION_DTYPE={run['ACTIVATION_DTYPE']!r}",
        "--gin.RANK_CLASSIFICATION=True",
        "--gin.BATCH_SIZE=100",
    ]
    if with_prompt:
        argv += [f"--gin.MODEL_DIR='{args.model_dir}'", "--gin.CHECKPOINT='latest'"]
    else:
        argv.append("--gin.PROMPT=None")
    if args.num_examples:
        argv.append(f"--gin.inference.evaluate.num_examples={args.num_examples}")
    gin.clear_config()
    return gin_utils.run_main(inference.evaluate, argv, config_filename=None)


def _latest_prompt_shape(model_dir: str) -> tuple[int, ...]:
    """(P, H) of the run's last exported prompt, prompts/step_<N>.npy."""
    return np.load(ModelDir(model_dir).latest_export(), mmap_mode="r").shape


def table(rows: list[tuple[str, dict[str, float], str]]) -> str:
    """The Markdown before/after table (the metrics are percentages, as T5's)."""
    lines = [
        "| frozen tiny T5 on `builtin_sentiment` (validation) | accuracy (greedy decoding) "
        "| accuracy (rank classification) |",
        "|---|---:|---:|",
    ]
    for label, metrics, task in rows:
        lines.append(
            f"| {label} | {metrics[f'{task}/accuracy']:.1f} "
            f"| {metrics[f'{task}/rank_accuracy']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Trains, evaluates the three settings and prints the table; returns their metrics."""
    args = parse_args(argv)
    start = time.time()
    print(f"== training a prompt on {TASK} (no prefix) into {args.model_dir}", flush=True)
    run = train(args)
    trained_at = time.time()
    print("== evaluating: no prompt / trained prompt / text prefix", flush=True)
    results = {
        "no_prompt": evaluate(TASK, False, args, run),
        "trained_prompt": evaluate(TASK, True, args, run),
        "text_prefix": evaluate(f"{TASK}_prefixed", False, args, run),
    }
    length, width = _latest_prompt_shape(args.model_dir)
    trained = f"trained prompt, {length} tokens = {length * width:,} parameters (after)"
    rows = [
        ("no prompt (before)", results["no_prompt"], TASK),
        (trained, results["trained_prompt"], TASK),
        ("text prefix `sentiment: ` instead (ceiling)", results["text_prefix"], f"{TASK}_prefixed"),
    ]
    text = table(rows)
    footer = (
        f"Chance is 50%. Training took {trained_at - start:.0f}s, evaluation "
        f"{time.time() - trained_at:.0f}s; the run is in {args.model_dir}."
    )
    print("\n" + text + "\n\n" + footer, flush=True)
    run_dir = ModelDir(args.model_dir)
    write_atomic(run_dir.path / DEMO_MD, (text + "\n\n" + footer + "\n").encode(), DEMO_MD)
    write_atomic(run_dir.path / DEMO_JSON, json.dumps(results, indent=1).encode(), DEMO_JSON)
    return results


if __name__ == "__main__":
    main()
