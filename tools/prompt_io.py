"""Export a run's prompt as `.npy`, and import a `.npy` prompt as a run the project evaluates.

    python tools/prompt_io.py export --model_dir runs/demo --best --output /tmp/demo_prompt.npy
    python tools/prompt_io.py import --prompt /tmp/demo_prompt.npy --model_dir /tmp/imported \
        --config runs/demo

`export` writes the prompt of a run: its `prompts/step_<N>` (latest, `--step N`) or `prompts/best`
(`--best`), in the form the trainer exported (`prompt_tuning.train.prompt_files`): the prompt
[P, H] (DPT, rank-probe, residual and single-task structured prompts already folded), every task's
prompt [N, P, H] of a multi-task prompt (`--task_id T` writes task T's [P, H] alone), or the
parameters `.npz` of an instance-dependent (IDPG) or per-layer prompt (then `--output` must end in
`.npz`). `--from_checkpoint` folds it again from the orbax checkpoint with the run's prompt module
instead (for a step whose file is missing; the checkpoint must have been kept).

`import` checks a plain prompt [P, H] against a gin config and writes a new MODEL_DIR holding it as
a plain prompt (`prompts.Prompt`) of that model:
- `config.gin`: the config (`--config`: a run's MODEL_DIR or a `.gin` file, plus any `--gin_file`
  and `--gin.NAME=VALUE` flags) with PROMPT = @prompts.Prompt(), PROMPT_LENGTH = P and
  MODEL_DIR = the new folder;
- `checkpoints/0/`: a checkpoint whose trainable params are `encoder/prompt/prompt`
  (`train.checkpoints.save_trained_params`);
- `prompts/step_0.npy`: the prompt.
`python -m prompt_tuning.eval` and `infer` evaluate it like a training run (with the plain-prompt
gin file, `--gin.MODEL_DIR=<new folder>` and `--gin.PROMPT_LENGTH=P`), and the tools here read it.
P must equal the config's PROMPT_LENGTH and H its model dim; otherwise nothing is written and
the error names both. (Without importing, `--gin.PROMPT_FILE="'p.npy'"` evaluates a `.npy` prompt
directly, and starts a new training run from it.) The imported folder has no optimizer state: to
train further, start a new MODEL_DIR with PROMPT_FILE.

Letters: P prompt length, H model dim.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/prompt_io.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.export import prompt_io  # noqa: E402
from prompt_tuning.train import gin_utils  # noqa: E402
from tools import _common  # noqa: E402


def export(
    model_dir: str,
    output: str,
    step: int | None,
    best: bool,
    from_checkpoint: bool,
    task_id: int | None = None,
) -> prompt_io.PromptIOResult:
    """Writes a run's exported prompt to `output` and says so (`prompt_io.export_prompt`)."""
    run = gin_utils.read_run_config(model_dir) if from_checkpoint else None
    result = prompt_io.export_prompt(model_dir, output, step, best, run, task_id)
    value = result.prompt
    shape = tuple(value.shape) if not isinstance(value, dict) else f"{len(value)} arrays"
    print(f"Exported the prompt {shape} of {result.source} to {result.path}")
    return result


def import_prompt(
    prompt_path: str,
    model_dir: str,
    config: str | None,
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
) -> prompt_io.PromptIOResult:
    """Writes a new MODEL_DIR holding `prompt_path` as a plain prompt (see the module docstring).

    Raises:
      PromptIOError: the prompt does not fit the config, or `model_dir` already holds a run.
    """
    from prompt_tuning.train import prompt_files  # noqa: PLC0415

    prompt = prompt_files.load_prompt_npy(prompt_path)
    target = pathlib.Path(model_dir).resolve()
    if target.exists() and any(target.iterdir()):
        raise prompt_io.PromptIOError(
            f"{target} exists and is not empty; import into a new folder."
        )
    files = prompt_io.config_files(config, gin_files)
    with gin_utils.fresh_gin() as gin:
        run, config_text = prompt_io.plain_prompt_config(gin, files, bindings, prompt, target)
    prompt_io.write_imported_run(target, prompt, run, config_text, prompt_path)
    print(
        f"Imported {prompt_path} {prompt.shape} into {target} (config.gin, checkpoints/0, "
        f"prompts/step_0.npy). Evaluate it with python -m prompt_tuning.eval and the plain-prompt "
        f"gin file, --gin.MODEL_DIR=\"'{target}'\" --gin.PROMPT_LENGTH={prompt.shape[0]}."
    )
    return prompt_io.PromptIOResult(prompt, target, str(prompt_path))


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The command line; returns (args, gin files, gin bindings) (`--gin.NAME=VALUE` flags)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    out = sub.add_parser("export", help="write a run's prompt [P, H] as .npy")
    out.add_argument("--model_dir", required=True, help="the training run")
    out.add_argument("--step", type=int, help="prompt of this step (default: the latest)")
    out.add_argument("--best", action="store_true", help="the best prompt (early stopping)")
    out.add_argument("--output", required=True, help="the .npy file to write")
    out.add_argument(
        "--from_checkpoint", action="store_true", help="fold from the orbax checkpoint"
    )
    out.add_argument("--task_id", type=int, help="one task's prompt of a multi-task export")
    imp = sub.add_parser(
        "import",
        help="write a MODEL_DIR holding a .npy prompt",
        description="Extra --gin_file=F and --gin.NAME=VALUE flags amend the config.",
    )
    imp.add_argument(
        "--prompt", required=True, help="the .npy prompt [P, H] or a PEFT adapter folder"
    )
    imp.add_argument("--model_dir", required=True, help="the new MODEL_DIR to write")
    imp.add_argument("--config", help="a run's MODEL_DIR (its config.gin) or a .gin file")
    args, rest = parser.parse_known_args(argv)
    gin_files, bindings = [], []
    for arg in rest:
        name, _, value = arg.partition("=")
        if args.command == "import" and name == "--gin_file" and value:
            gin_files.append(value)
        elif args.command == "import" and name.startswith("--gin.") and value:
            bindings.append(f"{name[len('--gin.') :]} = {value}")
        else:
            parser.error(f"unrecognized argument {arg!r}")
    if args.command == "export" and args.step is not None and args.best:
        parser.error("give at most one of --step and --best")
    return args, gin_files, bindings


def main(argv: Sequence[str] | None = None) -> prompt_io.PromptIOResult:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `PromptIOResult`.

    Raises:
      ValueError: missing inputs, or a prompt that does not fit the config.
    """
    args, gin_files, bindings = parse_args(argv)
    if args.command == "export":
        return export(
            args.model_dir, args.output, args.step, args.best, args.from_checkpoint, args.task_id
        )
    return import_prompt(args.prompt, args.model_dir, args.config, gin_files, bindings)


if __name__ == "__main__":
    _common.cli(main)
