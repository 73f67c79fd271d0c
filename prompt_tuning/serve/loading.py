"""Reading a folder of prompts to serve: `.npy` files and training runs, each named by its task.

    prompts/
      builtin_sentiment.npy        -> prompt "builtin_sentiment"
      builtin_topic/               -> a MODEL_DIR: prompts/best.npy, else the latest step_<N>.npy
      idpg_run/                    -> skipped: an IDPG run has no plain prompt (reason reported)
      rte_adapter/                 -> a PEFT prompt-tuning adapter folder (its prompt_embeddings)

A training run exports its prompt at every save (`train.prompt_files`; layout: `model_dir`): a plain
`[P, H]` `.npy`, folded for the parameterizations that have a plain form (Lester's prompt,
single-task structured prompts, DPT, the rank probe, residual prompts), which is served as a plain
prompt. A multi-task export `[N, P, H]` (one prompt per task id) is skipped with a reason naming how
to export one task's prompt. Instance-dependent prompts (IDPG's `InstancePrompt`) and per-layer
prompts (`DeepPrompt`) have no plain form: their runs export a parameters `.npz`, and they are
skipped with a reason that says so. A PEFT prompt-tuning adapter folder (`adapter_config.json` +
`adapter_model.safetensors`, `prompts.peft_format`) serves its `prompt_embeddings` [P, H]; one PEFT
cannot mean as an encoder prompt is skipped with the field that says so.

Letters: P prompt length, H model dim.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from prompt_tuning.model_dir import ModelDir
from prompt_tuning.prompts import files, peft_format
from prompt_tuning.serve.registry import PromptError
from prompt_tuning.train.prompt_files import NOT_FOLDABLE  # shared with pt-export

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class Found:
    """One entry of the prompt folder.

    Attributes:
      name: the prompt's name (the file's stem or the folder's name).
      source: the file it was read from (or the folder).
      prompt: the array, or None when the entry is skipped.
      reason: why it is skipped (None when served).
    """

    name: str
    source: str
    prompt: np.ndarray | None = None
    reason: str | None = None


def check_name(name: str) -> None:
    """Raises `PromptError` unless `name` is 1-128 letters, digits, `_`, `.`, `-`."""
    if not NAME_PATTERN.match(name):
        raise PromptError(
            f"Prompt name {name!r} is not allowed: use 1-128 letters, digits, '_', '.' or '-' "
            "(the task name, e.g. builtin_sentiment)."
        )


def _run_prompt(folder: pathlib.Path) -> pathlib.Path | None:
    """A run's exported prompt: prompts/best.npy, else the latest prompts/step_<N>.npy
    (`ModelDir.run_export`); None for a parameters `.npz` (no plain prompt)."""
    found = ModelDir(folder).run_export()
    return found if found is not None and found.suffix == ".npy" else None


def _no_prompt_reason(folder: pathlib.Path) -> str:
    """Why a run folder has no plain prompt, from its config.gin's PROMPT binding."""
    module = ModelDir(folder).prompt_module_name()
    if module in NOT_FOLDABLE:
        return (
            f"its prompt {module} is {NOT_FOLDABLE[module]} and has no plain [P, H] form; "
            "pt-serve serves plain prompts only (evaluate this run with pt-infer instead)"
        )
    return (
        "it holds no exported prompt (prompts/best.npy or prompts/step_<N>.npy) and no config.gin "
        "naming a prompt module; is it a training run's MODEL_DIR that saved at least once?"
    )


def _multi_task_reason(path: pathlib.Path, prompt: np.ndarray) -> str:
    """Why a multi-task export `[N, P, H]` is not served as one prompt."""
    return (
        f"{path} holds {prompt.shape[0]} task prompts {list(prompt.shape)} [N, P, H] (a multi-task "
        "export); serve each under its task's name: python tools/prompt_io.py export --model_dir "
        "RUN --task_id T --output PROMPT_DIR/<task>.npy"
    )


def _read(path: pathlib.Path) -> np.ndarray:
    """The `.npy` prompt (or adapter folder) at `path`: a named error for anything else."""
    try:
        if path.is_dir():
            return peft_format.read_adapter(path)
        return files.read_npy(path, "Prompt file")
    except (OSError, files.PromptFileError) as error:
        raise PromptError(str(error)) from None


def scan_prompt_dir(directory: str | pathlib.Path) -> list[Found]:
    """Reads every `.npy` file, adapter folder and run folder directly under `directory`, sorted
    by name.

    Entries that cannot be served (a corrupt file, a run without a plain prompt, a bad name) come
    back with `reason` set instead of raising, so one bad entry does not stop the server.

    Raises:
      FileNotFoundError: `directory` is not a folder.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"PROMPT_DIR {directory} is not a folder; point it at a folder of <task>.npy prompts "
            "and/or training runs (MODEL_DIRs), or leave it None and add prompts over HTTP."
        )
    found = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix == ".npy":
            name = path.stem
        elif path.is_dir():
            name = path.name
        else:
            continue
        try:
            check_name(name)
            adapter = path.is_dir() and peft_format.is_adapter(path)
            source = path if path.is_file() or adapter else _run_prompt(path)
            if source is None:
                found.append(Found(name, str(path), reason=_no_prompt_reason(path)))
                continue
            prompt = _read(source)
            if prompt.ndim == 3:
                found.append(Found(name, str(source), reason=_multi_task_reason(source, prompt)))
                continue
            found.append(Found(name, str(source), prompt))
        except PromptError as error:
            found.append(Found(name, str(path), reason=str(error)))
    return found
