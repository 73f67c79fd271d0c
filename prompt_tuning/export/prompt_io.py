"""A run's prompt as a `.npy`, and a `.npy` prompt as a run (`tools/prompt_io.py`).

- `export_prompt`: a run's exported prompt (latest step, a step, best, or folded again from the
  orbax checkpoint), one task's of a multi-task prompt, or an instance-dependent prompt's
  parameters, checked against the output's suffix and written;
- `config_files`, `check_fits`, `plain_prompt_config` (takes the `gin` module: only
  `train/gin_utils.py` imports gin) and `write_imported_run`: a new MODEL_DIR holding a plain
  prompt [P, H] of a model, written atomically (config.gin, checkpoints/0, prompts/step_0.npy).

Errors are `PromptIOError`s naming the input and the fix.

Letters: P prompt length, H model dim, N tasks.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from prompt_tuning.model_dir import ModelDir, step_export_name

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


class PromptIOError(ValueError):
    """A prompt cannot be exported or imported as asked; the message names why and the fix."""


def export_prompt(
    model_dir: str,
    output: str,
    step: int | None,
    best: bool,
    run: builder.RunConfig | None = None,
    task_id: int | None = None,
) -> PromptIOResult:
    """Writes a run's exported prompt to `output` (see the module docstring).

    Args:
      model_dir: the run's MODEL_DIR.
      output: the `.npy` (or `.npz` for an instance-dependent prompt's parameters) to write.
      step: the step (None: the latest).
      best: the best prompt (early stopping) instead.
      run: the run's config (`gin_utils.read_run_config`): fold the prompt again from the
        orbax checkpoint with the run's prompt module; None: read the exported prompt file.
      task_id: one task's prompt [P, H] of a multi-task prompt [N, P, H].

    Returns:
      The prompt written, where, and what it came from.

    Raises:
      PromptIOError: `--task_id` for a prompt without tasks, or an `--output` suffix that does
        not fit the prompt's form; ModelDirError/FileNotFoundError: no such prompt or checkpoint.
    """
    from prompt_tuning.train import checkpoints, prompt_files  # noqa: PLC0415

    if run is not None:
        step, trainable = checkpoints.load_trained_params(model_dir, best, step)
        exported = prompt_files.export_form(run.model.prompt, trainable, run.model.config.emb_dim)
        if exported is None:
            raise PromptIOError(f"The checkpoint of {model_dir} holds no prompt parameters.")
        value = exported.value
        source = f"{model_dir} checkpoint {'best/' if best else ''}{step}"
    else:
        path = ModelDir(model_dir).prompt_export(step, best)
        value, source = prompt_files.read_prompt_file(path), str(path)
    output = pathlib.Path(output)
    if isinstance(value, dict):
        if task_id is not None or output.suffix != ".npz":
            raise PromptIOError(
                f"{source} holds the parameters of an instance-dependent or per-layer prompt "
                f"({', '.join(sorted(value))}): it has no [P, H] prompt and no tasks; export it "
                "whole to a .npz --output (PROMPT_FILE loads it into the same prompt config)."
            )
        exported = prompt_files.PromptExport(prompt_files.PARAMETERS, value)
    else:
        if task_id is not None:
            if value.ndim != 3 or not 0 <= task_id < value.shape[0]:
                tasks = f"{value.shape[0]} tasks" if value.ndim == 3 else "one prompt, no tasks"
                raise PromptIOError(f"--task_id {task_id}: {source} holds {tasks}.")
            value = value[task_id]  # [P, H]
        kind = prompt_files.PLAIN if value.ndim == 2 else prompt_files.MULTI_TASK
        exported = prompt_files.PromptExport(kind, value)
        if output.suffix != ".npy":
            raise PromptIOError(f"--output {output}: a prompt array is written as .npy.")
    output.parent.mkdir(parents=True, exist_ok=True)
    prompt_files.write_file(output, exported)
    return PromptIOResult(value, output, source)


def config_files(config: str | None, gin_files: Sequence[str]) -> list[pathlib.Path]:
    """The gin files to parse: `config` (a run's config.gin or a .gin file), then `gin_files`.

    Raises:
      PromptIOError: no config at all, or `config` is neither a run folder nor a file.
    """
    files = []
    if config is not None:
        path = pathlib.Path(config)
        path = ModelDir(path).config_gin if path.is_dir() else path
        if not path.is_file():
            raise PromptIOError(
                f"--config {config} is neither a run's MODEL_DIR with config.gin nor a gin file."
            )
        files.append(path)
    files += [pathlib.Path(f) for f in gin_files]
    if not files:
        raise PromptIOError(
            "import needs the model the prompt is for: --config RUN_DIR (or a .gin file), or "
            "--gin_file=gin_configs/models/...gin --gin_file=gin_configs/prompts/...gin ..."
        )
    return files


def check_fits(prompt: np.ndarray, prompt_length: int, emb_dim: int, where: str) -> None:
    """Checks a prompt [P, H] against a config's PROMPT_LENGTH and model dim.

    Raises:
      PromptIOError: naming both shapes and the fix.
    """
    if prompt.shape != (prompt_length, emb_dim):
        raise PromptIOError(
            f"The prompt has shape {prompt.shape} but {where} expects (PROMPT_LENGTH, model dim) "
            f"= {(prompt_length, emb_dim)}. Use the config of the model the prompt was trained "
            "for, with PROMPT_LENGTH set to the prompt's length (--gin.PROMPT_LENGTH=...)."
        )


def plain_prompt_config(
    gin: Any,
    files: Sequence[pathlib.Path],
    bindings: Sequence[str],
    prompt: np.ndarray,
    target: pathlib.Path,
) -> tuple[builder.RunConfig, str]:
    """The config of a plain prompt [P, H] of the model `files` + `bindings` configure.

    Args:
      gin: the `gin` module, cleared (inside `gin_utils.fresh_gin`).
      files: gin files (`config_files`).
      bindings: gin bindings (`NAME = VALUE`).
      prompt: the prompt [P, H].
      target: the new MODEL_DIR.

    Returns:
      `(run config, config.gin text)` with PROMPT = @prompts.Prompt(), PROMPT_LENGTH = P and
      MODEL_DIR = `target`.

    Raises:
      PromptIOError: the prompt does not fit the config; GinConfigError: no MODEL.
    """
    from prompt_tuning.train import gin_utils  # noqa: PLC0415

    gin_utils.parse_gin_files(files, bindings)
    model = gin_utils.gin_macro(gin, "MODEL")
    length = gin_utils.gin_macro(gin, "PROMPT_LENGTH", getattr(model.prompt, "length", None))
    check_fits(prompt, length, model.config.emb_dim, " + ".join(map(str, files)))
    gin.parse_config(PLAIN_PROMPT_BINDINGS)
    gin.parse_config(f"PROMPT_LENGTH = {prompt.shape[0]}\nMODEL_DIR = {str(target)!r}")
    return gin_utils.run_config_from_gin(gin, target), gin.config_str()


def write_imported_run(
    target: pathlib.Path,
    prompt: np.ndarray,
    run: builder.RunConfig,
    config_text: str,
    prompt_path: str,
) -> None:
    """Writes the MODEL_DIR `target` (absent or empty) holding `prompt`, all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_run(staging, prompt, run, config_text, prompt_path)
        if target.exists():
            target.rmdir()  # empty (checked by the caller)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
