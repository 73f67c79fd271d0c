"""Exporting a trained prompt as a Hugging Face PEFT prompt-tuning adapter (`pt-export`).

    pt-export --prompt runs/sentiment --format=peft --base_model hf/t5_tiny --output adapters/s

`--prompt` is a prompt file (what `train.prompt_files.read_prompt_file` reads: a `.npy`, or an
adapter folder) or a training run's MODEL_DIR (its `prompts/best`, else its latest
`prompts/step_<N>`: `model_dir.ModelDir.run_export`). What is written:
- a plain prompt `[P, H]`: one adapter folder (`prompts.peft_format`) with a model card;
- a multi-task prompt `[N, P, H]` (row t for task id t): one adapter per task, in subfolders named
  by `task_names` (else `task_0` ... `task_<N-1>`), all in one atomic write;
- a parameters `.npz` (IDPG's `InstancePrompt`, `DeepPrompt`): refused with the reason the server
  gives (`prompt_files.NOT_FOLDABLE`): such prompts have no single matrix to prepend.

Letters: N tasks, P prompt length, H model dim.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from prompt_tuning.export import model_card
from prompt_tuning.model_dir import PROMPTS, ModelDir
from prompt_tuning.prompts import peft_format
from prompt_tuning.prompts.files import PromptFileError
from prompt_tuning.train import prompt_files

FORMATS = ("peft",)
_TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class ExportError(PromptFileError):
    """The prompt cannot be exported as asked; the message names why and what to do."""


def resolve_prompt(prompt: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
    """The prompt file `--prompt` names, and its run's MODEL_DIR when it came from one.

    Raises:
      FileNotFoundError: no such file or folder.
      ExportError: a MODEL_DIR without an exported prompt (the reason is named).
    """
    path = pathlib.Path(prompt)
    if not path.exists():
        raise FileNotFoundError(f"--prompt {path} does not exist.")
    if path.is_file() or peft_format.is_adapter(path):
        parent = ModelDir(path.parent.parent) if path.parent.name == PROMPTS else None
        return path, parent.path if parent is not None and parent.has_config() else None
    found = ModelDir(path).run_export()
    if found is None:
        raise ExportError(
            f"--prompt {path} is a folder with no prompts/best.npy or prompts/step_<N>.npy: "
            f"{_not_plain(path) or 'is it the MODEL_DIR of a run that saved at least once'}?"
        )
    return found, path


def _not_plain(model_dir: pathlib.Path | None) -> str | None:
    """Why a run's prompt has no plain form, from its config.gin (None when it does not say)."""
    module = ModelDir(model_dir).prompt_module_name() if model_dir is not None else None
    if module in prompt_files.NOT_FOLDABLE:
        return f"its prompt {module} is {prompt_files.NOT_FOLDABLE[module]}"
    return None


def _base_model_shape(base_model: str) -> tuple[int | None, int | None, int | None]:
    """(d_model, num_heads, num_layers) of a local Hugging Face folder; Nones for a hub name."""
    config = pathlib.Path(base_model) / "config.json"
    if not config.is_file():
        return None, None, None
    hf = json.loads(config.read_text())
    return hf.get("d_model"), hf.get("num_heads"), hf.get("num_layers")


def _task_names(count: int, task_names: Sequence[str] | None, source: pathlib.Path) -> list[str]:
    """The subfolder names of a multi-task export, checked."""
    if task_names is None:
        return [f"task_{t}" for t in range(count)]
    names = list(task_names)
    if len(names) != count or len(set(names)) != count:
        raise ExportError(
            f"{source} holds {count} task prompts, but --task_names gives {len(names)} "
            f"({len(set(names))} distinct): give one name per task id, in task-id order."
        )
    for name in names:
        if not _TASK_NAME.match(name):
            raise ExportError(f"--task_names: {name!r} is not a folder name (letters, digits, _.-)")
    return names


def export_peft(
    prompt: str | pathlib.Path,
    base_model: str,
    output: str | pathlib.Path,
    task_names: Sequence[str] | None = None,
) -> list[pathlib.Path]:
    """Writes the PEFT adapter(s) of a prompt file or a run (see the module docstring).

    Args:
      prompt: a prompt file, an adapter folder or a MODEL_DIR.
      base_model: the frozen model's HF folder or hub name (`base_model_name_or_path`); a local
        folder's `config.json` also gives num_attention_heads and num_layers, and its d_model
        must equal the prompt's H.
      output: the new folder; an existing non-empty one is refused.
      task_names: the names of a multi-task prompt's tasks, in task-id order.

    Returns:
      The adapter folders written (`output`, or its per-task subfolders).

    Raises:
      FileNotFoundError: `prompt` does not exist.
      FileExistsError: `output` is not empty.
      PromptFileError: the prompt cannot be an adapter (`ExportError`, `AdapterError`: the reason
        is named), or is no prompt file at all.
    """
    source, model_dir = resolve_prompt(prompt)
    value = prompt_files.read_prompt_file(source)
    if isinstance(value, dict):
        why = _not_plain(model_dir) or (
            f"it holds the parameters ({', '.join(sorted(value))}) of an instance-dependent "
            "(IDPG, ATTEMPT) or per-layer (deep) prompt"
        )
        raise ExportError(
            f"{source} cannot be a PEFT prompt-tuning adapter: {why}, which has no single [P, H] "
            "prompt to prepend to the encoder input (pt-serve refuses it for the same reason). "
            "Evaluate such a run with pt-infer instead."
        )
    width, heads, layers = _base_model_shape(base_model)
    if width is not None and width != value.shape[-1]:
        raise ExportError(
            f"{source} holds prompts of width {value.shape[-1]}, but --base_model {base_model} has "
            f"d_model {width}: give the frozen model the prompt was trained with."
        )
    facts = model_card.run_facts(source, model_dir)
    length, dim = value.shape[-2:]
    config = peft_format.adapter_config(length, dim, base_model, heads, layers)
    if value.ndim == 2:
        text = model_card.card(facts, base_model, (length, dim))
        return [peft_format.write_adapter(output, value, config, text)]
    names = _task_names(value.shape[0], task_names, source)

    def write(tmp: pathlib.Path) -> None:
        for name, task_prompt in zip(names, np.asarray(value), strict=True):
            text = model_card.card(facts, base_model, (length, dim), task_name=name)
            peft_format.write_files(tmp / name, task_prompt, config, text)

    peft_format.write_folder_atomically(output, write)
    return [pathlib.Path(output) / name for name in names]
