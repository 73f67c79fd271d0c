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
import dataclasses
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if __package__ in (None, ""):  # run as `python tools/prompt_io.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.model_dir import ModelDir, step_export_name  # noqa: E402
from tools import _common  # noqa: E402

if TYPE_CHECKING:
    from prompt_tuning.train import builder

PLAIN_PROMPT_BINDINGS = """
from prompt_tuning import prompts
PROMPT = @prompts.Prompt()
prompts.Prompt.length = %PROMPT_LENGTH
"""


@dataclasses.dataclass
class PromptIOResult:
    """What `main` returns.

    Attributes:
      prompt: the exported or imported prompt ([P, H], [N, P, H], or the parameters of an
        instance-dependent prompt).
      path: the written `.npy` (export) or the new MODEL_DIR (import).
      source: what the prompt came from (a file, or a run's step).
    """

    prompt: np.ndarray | dict[str, np.ndarray]
    path: pathlib.Path
    source: str


def export(
    model_dir: str,
    output: str,
    step: int | None,
    best: bool,
    from_checkpoint: bool,
    task_id: int | None = None,
) -> PromptIOResult:
    """Writes a run's exported prompt to `output` (see the module docstring).

    Raises:
      ToolError: no such prompt or checkpoint (the available steps are named), `--task_id` for a
        prompt without tasks, or an `--output` suffix that does not fit the prompt's form.
    """
    from prompt_tuning.train import checkpoints, prompt_files  # noqa: PLC0415

    if from_checkpoint:
        run = _common.read_run_config(model_dir)
        step, trainable = checkpoints.load_trained_params(model_dir, best, step)
        exported = prompt_files.export_form(run.model.prompt, trainable, run.model.config.emb_dim)
        if exported is None:
            raise _common.ToolError(f"The checkpoint of {model_dir} holds no prompt parameters.")
        value = exported.value
        source = f"{model_dir} checkpoint {'best/' if best else ''}{step}"
    else:
        path = ModelDir(model_dir).prompt_export(step, best)
        value, source = prompt_files.read_prompt_file(path), str(path)
    output = pathlib.Path(output)
    if isinstance(value, dict):
        if task_id is not None or output.suffix != ".npz":
            raise _common.ToolError(
                f"{source} holds the parameters of an instance-dependent or per-layer prompt "
                f"({', '.join(sorted(value))}): it has no [P, H] prompt and no tasks; export it "
                "whole to a .npz --output (PROMPT_FILE loads it into the same prompt config)."
            )
        exported = prompt_files.PromptExport(prompt_files.PARAMETERS, value)
    else:
        if task_id is not None:
            if value.ndim != 3 or not 0 <= task_id < value.shape[0]:
                tasks = f"{value.shape[0]} tasks" if value.ndim == 3 else "one prompt, no tasks"
                raise _common.ToolError(f"--task_id {task_id}: {source} holds {tasks}.")
            value = value[task_id]  # [P, H]
        kind = prompt_files.PLAIN if value.ndim == 2 else prompt_files.MULTI_TASK
        exported = prompt_files.PromptExport(kind, value)
        if output.suffix != ".npy":
            raise _common.ToolError(f"--output {output}: a prompt array is written as .npy.")
    output.parent.mkdir(parents=True, exist_ok=True)
    prompt_files.write_file(output, exported)
    shape = tuple(value.shape) if not isinstance(value, dict) else f"{len(value)} arrays"
    print(f"Exported the prompt {shape} of {source} to {output}")
    return PromptIOResult(value, output, source)


def _config_files(config: str | None, gin_files: Sequence[str]) -> list[pathlib.Path]:
    """The gin files to parse: `config` (a run's config.gin or a .gin file), then `gin_files`.

    Raises:
      ToolError: no config at all, or `config` is neither a run folder nor a file.
    """
    files = []
    if config is not None:
        path = pathlib.Path(config)
        path = ModelDir(path).config_gin if path.is_dir() else path
        if not path.is_file():
            raise _common.ToolError(
                f"--config {config} is neither a run's MODEL_DIR with config.gin nor a gin file."
            )
        files.append(path)
    files += [pathlib.Path(f) for f in gin_files]
    if not files:
        raise _common.ToolError(
            "import needs the model the prompt is for: --config RUN_DIR (or a .gin file), or "
            "--gin_file=gin_configs/models/...gin --gin_file=gin_configs/prompts/...gin ..."
        )
    return files


def check_fits(prompt: np.ndarray, prompt_length: int, emb_dim: int, where: str) -> None:
    """Checks a prompt [P, H] against a config's PROMPT_LENGTH and model dim.

    Raises:
      ToolError: naming both shapes and the fix.
    """
    if prompt.shape != (prompt_length, emb_dim):
        raise _common.ToolError(
            f"The prompt has shape {prompt.shape} but {where} expects (PROMPT_LENGTH, model dim) "
            f"= {(prompt_length, emb_dim)}. Use the config of the model the prompt was trained "
            "for, with PROMPT_LENGTH set to the prompt's length (--gin.PROMPT_LENGTH=...)."
        )


def import_prompt(
    prompt_path: str,
    model_dir: str,
    config: str | None,
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
) -> PromptIOResult:
    """Writes a new MODEL_DIR holding `prompt_path` as a plain prompt (see the module docstring).

    Raises:
      ToolError: the prompt does not fit the config, or `model_dir` already holds a run.
    """

    from prompt_tuning.train import prompt_files  # noqa: PLC0415

    prompt = prompt_files.load_prompt_npy(prompt_path)
    target = pathlib.Path(model_dir).resolve()
    if target.exists() and any(target.iterdir()):
        raise _common.ToolError(f"{target} exists and is not empty; import into a new folder.")
    files = _config_files(config, gin_files)
    with _common.fresh_gin() as gin:
        _common.parse_gin_files(files, bindings)
        model = _common.gin_macro(gin, "MODEL")
        length = _common.gin_macro(gin, "PROMPT_LENGTH", getattr(model.prompt, "length", None))
        check_fits(prompt, length, model.config.emb_dim, " + ".join(map(str, files)))
        gin.parse_config(PLAIN_PROMPT_BINDINGS)
        gin.parse_config(f"PROMPT_LENGTH = {prompt.shape[0]}\nMODEL_DIR = {str(target)!r}")
        run = _common.run_config_from_gin(gin, target)
        config_text = gin.config_str()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_run(staging, prompt, run, config_text, prompt_path)
        if target.exists():
            target.rmdir()  # empty (checked above)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(
        f"Imported {prompt_path} {prompt.shape} into {target} (config.gin, checkpoints/0, "
        f"prompts/step_0.npy). Evaluate it with python -m prompt_tuning.eval and the plain-prompt "
        f"gin file, --gin.MODEL_DIR=\"'{target}'\" --gin.PROMPT_LENGTH={prompt.shape[0]}."
    )
    return PromptIOResult(prompt, target, str(prompt_path))


def _write_run(
    folder: pathlib.Path,
    prompt: np.ndarray,
    run: builder.RunConfig,
    config_text: str,
    prompt_path: str,
) -> None:
    """Writes config.gin, checkpoints/0 (trainable params = the prompt) and prompts/step_0.npy."""
    from prompt_tuning.train import checkpoints, prompt_files  # noqa: PLC0415

    meta = {
        "seed": run.random_seed,
        "task": run.task,
        "batch_size": run.batch_size,
        "imported_from": str(pathlib.Path(prompt_path).resolve()),
    }
    checkpoints.save_trained_params(folder, 0, {"encoder": {"prompt": {"prompt": prompt}}}, meta)
    export = prompt_files.PromptExport(prompt_files.PLAIN, prompt)
    prompt_files.write_export(folder, step_export_name(0), export)
    ModelDir(folder).write_config(config_text)


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


def main(argv: Sequence[str] | None = None) -> PromptIOResult:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `PromptIOResult`.

    Raises:
      ToolError: missing inputs, or a prompt that does not fit the config.
    """
    args, gin_files, bindings = parse_args(argv)
    if args.command == "export":
        return export(
            args.model_dir, args.output, args.step, args.best, args.from_checkpoint, args.task_id
        )
    return import_prompt(args.prompt, args.model_dir, args.config, gin_files, bindings)


if __name__ == "__main__":
    _common.cli(main)
