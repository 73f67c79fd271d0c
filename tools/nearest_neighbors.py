"""Nearest vocabulary tokens of each prompt position (Lester et al., 2021, section 7).

    python tools/nearest_neighbors.py --model_dir runs/demo --top_k 5

For every prompt position p, the top-k vocabulary tokens by cosine similarity between the prompt
vector prompt[p] [H] and the rows of the frozen model's token embedding
`token_embedder/embedding` [V, H]. Lester et al. read these neighbours to interpret learned
prompts: neighbours form semantic clusters, and with class-label initialization the class labels
persist as neighbours after training. `--labels` (default: the task's label strings when
MODEL_DIR/config.gin names MIXTURE_OR_TASK_NAME and `tasks.label_strings` knows it) reports, for
each label, the prompt positions having one of the label's tokens among their top-k neighbours
(the bare word-boundary piece `▁` does not count).

Inputs:
- the prompt: `--model_dir` (prompts/step_<N>.npy of the latest step, `--step N`, or `--best`)
  or `--prompt p.npy` (or a PEFT adapter folder); `--task_id T` picks task T of a multi-task
  export [N, P, H]
  (an instance-dependent prompt's `.npz` has no fixed prompt and is refused);
- the frozen embedding: `--checkpoint` (a T5X, orbax or Hugging Face checkpoint), default the
  INITIAL_CHECKPOINT_PATH of MODEL_DIR/config.gin (without one, the random frozen model the
  trainer built from RANDOM_SEED);
- the vocabulary: `--spm` (a SentencePiece model; default the tiny T5's, which the built-in tasks
  use) and `--extra_ids` (T5's vocabulary: 100). Embedding rows beyond the vocabulary size
  (padding rows of T5 checkpoints: 32,128 rows for 32,100 tokens) are ignored.

Output: a table printed on stdout (position | neighbours with similarities) and saved as Markdown
(`--output`, default MODEL_DIR/nearest_neighbors.md; with `--prompt` only when `--output` is
given).

Letters: P prompt length, H model dim, V vocabulary size, k neighbours.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as `python tools/nearest_neighbors.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.analysis import neighbors  # noqa: E402
from prompt_tuning.model_dir import ModelDir, resolve_prompt  # noqa: E402
from prompt_tuning.train import gin_utils  # noqa: E402
from tools import _common  # noqa: E402

if TYPE_CHECKING:
    from prompt_tuning.train import builder


def _default_labels(run: builder.RunConfig | None) -> list[str]:
    """The run's task label strings, or [] (no task, or a task `tasks` does not know)."""
    if run is None or run.task is None:
        return []
    import tasks  # noqa: PLC0415

    try:
        return list(tasks.label_strings(run.task) or ())
    except KeyError:
        return []


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    from tasks import vocabularies  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", help="a training run's MODEL_DIR")
    parser.add_argument(
        "--prompt", help="a .npy prompt [P, H] or a PEFT adapter folder (instead of --model_dir)"
    )
    parser.add_argument("--step", type=int, help="MODEL_DIR/prompts/step_<STEP>.npy")
    parser.add_argument("--best", action="store_true", help="MODEL_DIR/prompts/best.npy")
    parser.add_argument(
        "--checkpoint", help="frozen T5 checkpoint (default: INITIAL_CHECKPOINT_PATH of config.gin)"
    )
    parser.add_argument("--spm", default=vocabularies.TINY_SPM_PATH, help="SentencePiece model")
    parser.add_argument("--extra_ids", type=int, default=0, help="sentinel ids (T5: 100)")
    parser.add_argument("--top_k", type=int, default=5, help="neighbours per position")
    parser.add_argument("--labels", help="comma-separated class labels (default: the task's)")
    parser.add_argument("--task_id", type=int, help="task of a multi-task prompt [N, P, H]")
    parser.add_argument("--output", help="Markdown file (default MODEL_DIR/nearest_neighbors.md)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> neighbors.NeighborsResult:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `neighbors.NeighborsResult`.

    Raises:
      ValueError: missing or inconsistent inputs (the message names the flag to fix).
    """
    args = parse_args(argv)
    if args.top_k < 1:
        raise _common.ToolError(f"--top_k must be at least 1, got {args.top_k}.")
    path = resolve_prompt(args.model_dir, args.prompt, args.step, args.best)
    prompt = neighbors.prompt_matrix(path, args.task_id)
    has_config = args.model_dir is not None and ModelDir(args.model_dir).has_config()
    run = gin_utils.read_run_config(args.model_dir) if has_config else None
    embedding = neighbors.frozen_embedding(args.checkpoint, run)
    labels = args.labels.split(",") if args.labels else _default_labels(run)
    result = neighbors.analyse(
        path, prompt, embedding, args.spm, args.extra_ids, args.top_k, labels
    )
    print(result.markdown)
    output = args.output or (
        pathlib.Path(args.model_dir) / "nearest_neighbors.md" if args.model_dir else None
    )
    if output is not None:
        output = pathlib.Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(result.markdown)
        print(f"Wrote {output}")
    return dataclasses.replace(result, output=output)


if __name__ == "__main__":
    _common.cli(main)
