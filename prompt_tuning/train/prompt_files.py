"""The prompt as a file: what a run exports at each save, and what PROMPT_FILE loads.

A run writes `MODEL_DIR/prompts/step_<N>` and `prompts/best` in one of three forms, chosen by the
prompt parameterization (the run's log says which):

- plain `.npy` `[P, H]`: the matrix the encoder prepends to every input. `Prompt`, and the
  reparameterized prompts folded by their `fold` (DPT, rank probe, residual, a single-task
  structured prompt).
- multi-task `.npy` `[N, P, H]`: one prompt per task id, row t the prompt of the examples with
  `task_ids == t` (`StructuredPrompt` with `num_tasks` N > 1 folded for every task; `PromptBank`).
- parameters `.npz`: prompts without a fixed matrix export their trained parameters, the arrays
  under `encoder/prompt/` keyed by their "/"-joined path (`prompt`, `generator/down/kernel`, ...).
  `InstancePrompt` (IDPG) generates a different prompt for every example (its `prompt` array is
  only the up-projection bias, not a prompt anyone could prepend), and `DeepPrompt` inserts one at
  every layer.

PROMPT_FILE loads any of them into a model whose prompt has that form: a `[P, H]` file into the
plain `Prompt` of length P, an `[N, P, H]` file into a `PromptBank` of N prompts
(gin_configs/prompts/prompt_bank.gin), a `.npz` into the prompt configuration that wrote it
(every name and shape must match). Anything else is an error that names the file, both shapes and
the gin file to use; nothing is loaded half-way.

A Hugging Face PEFT prompt-tuning adapter folder (`adapter_config.json` +
`adapter_model.safetensors`, `prompt_tuning.prompts.peft_format`) is accepted wherever a prompt file
is: it reads as its `prompt_embeddings` `[P, H]`, a plain prompt.

Where the exports live in MODEL_DIR, and which is a run's "best" and "latest" prompt:
`prompt_tuning.model_dir`.

Letters: P prompt length, H model dim, N tasks (or prompts of a bank), L encoder layers.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from prompt_tuning.model_dir import PROMPTS, ModelDir, write_atomic
from prompt_tuning.prompts import files, peft_format
from prompt_tuning.prompts.files import PromptFileError

PLAIN, MULTI_TASK, PARAMETERS = "plain", "multi_task", "parameters"
SUFFIXES = {PLAIN: ".npy", MULTI_TASK: ".npy", PARAMETERS: ".npz"}
PLAIN_GIN = "gin_configs/prompts/prompt_tuning_random_uniform.gin"
BANK_GIN = "gin_configs/prompts/prompt_bank.gin"
# Parameterizations without a plain [P, H] form, and why (their runs export a parameters .npz).
NOT_FOLDABLE = {
    "InstancePrompt": "instance-dependent (IDPG: a generator computes each example's prompt)",
    "DeepPrompt": "per-layer (a prompt at every encoder layer)",
    "AttemptPrompt": (
        "instance-dependent (ATTEMPT: an attention network mixes source prompts and the target "
        "prompt for each example)"
    ),
    "DecomposedInputPrompt": (
        "decomposed (DePT: a prompt plus a low-rank update of the input embeddings, which a "
        "prepended [P, H] matrix cannot express)"
    ),
}

__all__ = [
    "NOT_FOLDABLE",
    "PromptExport",
    "PromptFileError",
    "export_form",
    "load_into",
    "load_prompt_npy",
    "parameter_shapes",
    "read_prompt_file",
    "read_source_prompts",
    "source_prompts_loader",
    "values_for",
    "write_export",
    "write_file",
]


@dataclasses.dataclass(frozen=True)
class PromptExport:
    """One exported prompt.

    Attributes:
      kind: PLAIN, MULTI_TASK or PARAMETERS.
      value: the array (`[P, H]` or `[N, P, H]`), or `{path: array}` of the prompt parameters.
    """

    kind: str
    value: np.ndarray | dict[str, np.ndarray]

    @property
    def suffix(self) -> str:
        """The file suffix of this form."""
        return SUFFIXES[self.kind]

    def describe(self, module: Any) -> str:
        """One sentence for the run's log: what prompts/step_<N> holds."""
        name = type(module).__name__
        if self.kind == PLAIN:
            return f"prompts/step_<N>.npy hold the {name}'s prompt {self.value.shape} [P, H]."
        if self.kind == MULTI_TASK:
            return (
                f"prompts/step_<N>.npy hold the {name}'s {self.value.shape[0]} task prompts "
                f"{self.value.shape} [N, P, H], row t for task id t (PROMPT_FILE loads them "
                f"into a PromptBank: {BANK_GIN})."
            )
        names = ", ".join(sorted(self.value))
        return (
            f"{name} has no single [P, H] prompt (it is generated per example or per layer): "
            f"prompts/step_<N>.npz hold its parameters ({names}), which PROMPT_FILE loads into the "
            "same prompt configuration."
        )


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a": {"b": x}}` -> `{"a/b": x}`."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `_flatten`."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def parameter_shapes(params: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The prompt parameters of a (trainable or full, possibly abstract) tree by "/"-joined path
    under `encoder/prompt`, e.g. `{"prompt": (P, H)}`."""
    prompt = params.get("encoder", {}).get("prompt", {})
    return {k: tuple(v.shape) for k, v in _flatten(prompt).items()}


def export_form(
    prompt_module: Any, params: Mapping[str, Any], width: int | None = None
) -> PromptExport | None:
    """What a run exports for its trained prompt (see the module docstring).

    Args:
      prompt_module: the model's prompt module (None: no prompt).
      params: trainable (or full) params holding `encoder/prompt/...`.
      width: H, passed to `fold` (the rank probe with fixed bases needs it).

    Returns:
      The `PromptExport`, or None when the params hold no prompt (PROMPT=None).

    Raises:
      ValueError: a module's `fold` returned neither `[P, H]` nor `[N, P, H]`; errors raised
        inside `fold` propagate (a broken fold must not become a silently different export).
    """
    prompt_params = params.get("encoder", {}).get("prompt")
    if not prompt_params:
        return None
    host = jax.tree.map(np.asarray, jax.device_get(prompt_params))
    fold = getattr(prompt_module, "fold", None)
    if fold is None:
        return PromptExport(PARAMETERS, _flatten(host))
    folded = np.asarray(fold({"params": host}, width=width))
    if folded.ndim == 2:
        return PromptExport(PLAIN, folded)
    if folded.ndim == 3:
        return PromptExport(MULTI_TASK, folded)
    raise ValueError(
        f"{type(prompt_module).__name__}.fold returned shape {folded.shape}; a fold returns the "
        "prompt [P, H] or one prompt per task [N, P, H]."
    )


def write_export(model_dir: str | os.PathLike, name: str, export: PromptExport) -> pathlib.Path:
    """Saves an export as MODEL_DIR/prompts/<name>.npy (or .npz), atomically.

    Args:
      model_dir: MODEL_DIR.
      name: e.g. "step_1000" or "best".
      export: from `export_form`.

    Returns:
      The written path.

    Raises:
      CheckpointWriteError: the disk is full or MODEL_DIR is not writable (the path and the
        fix); the earlier files are unchanged.
    """
    path = ModelDir(model_dir).export_path(name, export.suffix)
    return write_atomic(path, _export_bytes(export), "the prompt export")


def write_file(path: str | os.PathLike, export: PromptExport) -> pathlib.Path:
    """Saves an export to `path` (`.npy` for arrays, `.npz` for parameters), atomically."""
    files.atomic_write(path, _export_bytes(export))
    return pathlib.Path(path)


def _export_bytes(export: PromptExport) -> bytes:
    """The `.npy` (arrays) or `.npz` (parameters) file content of an export."""
    buffer = io.BytesIO()
    if export.kind == PARAMETERS:
        np.savez(buffer, **export.value)
    else:
        np.save(buffer, np.asarray(export.value))
    return buffer.getvalue()


def read_prompt_file(path: str | os.PathLike) -> np.ndarray | dict[str, np.ndarray]:
    """Reads a PROMPT_FILE: a `[P, H]` / `[N, P, H]` `.npy`, a parameters `.npz`, or a PEFT
    prompt-tuning adapter folder (its `prompt_embeddings` `[P, H]`, `prompts.peft_format`).

    Raises:
      FileNotFoundError: no such file or folder.
      PromptFileError: not a NumPy array file, or an array that is not 2-D or 3-D; a folder that
        is not a PEFT adapter, or an adapter that is not an encoder prompt (`AdapterError`).
    """
    if pathlib.Path(path).is_dir():
        if not peft_format.is_adapter(path):
            raise PromptFileError(
                f"PROMPT_FILE {path} is a folder without {peft_format.ADAPTER_CONFIG}: give a "
                "prompt .npy file, a parameters .npz, or a PEFT prompt-tuning adapter folder "
                "(for a training run, its prompts/best.npy)."
            )
        return peft_format.read_adapter(path)
    value = files.read_arrays(path)
    if isinstance(value, np.ndarray) and value.ndim not in (2, 3):
        raise PromptFileError(
            f"PROMPT_FILE {path} holds shape {value.shape}; a prompt is [P, H] (or [N, P, H], one "
            "per task)."
        )
    return value


def load_prompt_npy(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Loads a plain prompt `[P, H]` (`.npy`), e.g. for analysis tools and ensembles.

    Args:
      path: the `.npy` file.
      shape: the expected (P, H), checked when given.

    Returns:
      The float array [P, H].

    Raises:
      FileNotFoundError: no such file.
      PromptFileError: not a `.npy` array, not 2-D (a multi-task or parameters export is named
        as such), or not of `shape`.
    """
    value = read_prompt_file(path)
    if isinstance(value, dict):
        raise PromptFileError(
            f"PROMPT_FILE {path} holds the parameters of an instance-dependent or per-layer prompt "
            f"({', '.join(sorted(value))}), not a prompt [P, H]: such prompts have no single "
            "matrix. Load it as PROMPT_FILE of the prompt configuration that wrote it."
        )
    if value.ndim != 2:
        raise PromptFileError(
            f"PROMPT_FILE {path} holds {value.shape[0]} task prompts {value.shape} [N, P, H], not "
            "one prompt [P, H]; take one task's prompt with `python tools/prompt_io.py export "
            f"--task_id T`, or evaluate all with a PromptBank ({BANK_GIN})."
        )
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise PromptFileError(
            f"PROMPT_FILE {path} holds a prompt of shape {value.shape}, but the model expects "
            f"{tuple(shape)} (PROMPT_LENGTH, model dim). Use a prompt trained for this model and "
            "PROMPT_LENGTH."
        )
    return value


def _array_mismatch(path: Any, shape: tuple[int, ...], want: tuple[int, ...], name: str) -> str:
    """Why an array PROMPT_FILE does not fit the model's `encoder/prompt/prompt` of shape `want`."""
    if len(shape) == 3 and len(want) == 2:
        return (
            f"PROMPT_FILE {path} holds {shape[0]} task prompts {shape} [N, P, H], but the model's "
            f"{name} has one prompt {want}. Evaluate them with a PromptBank ({BANK_GIN}, "
            f"NUM_TASKS={shape[0]}, PROMPT_LENGTH={shape[1]}) on a mixture with task_ids, or take "
            "one task's prompt with `python tools/prompt_io.py export --task_id T`."
        )
    if len(shape) == 2 and len(want) == 3:
        return (
            f"PROMPT_FILE {path} holds one prompt {shape} [P, H], but the model's {name} holds "
            f"{want[0]} prompts {want}; evaluate it with the plain prompt ({PLAIN_GIN}, "
            f"PROMPT_LENGTH={shape[0]})."
        )
    return (
        f"PROMPT_FILE {path} holds a prompt of shape {shape}, but the model expects {want} "
        "(PROMPT_LENGTH, model dim). Use a prompt trained for this model, with its PROMPT_LENGTH."
    )


def values_for(
    value: np.ndarray | Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    prompt_module: Any,
    path: Any,
) -> dict[str, np.ndarray]:
    """Matches a PROMPT_FILE's content to the model's prompt parameters.

    Args:
      value: what `read_prompt_file` returned.
      shapes: the model's prompt parameters, `{"/"-joined path under encoder/prompt: shape}`.
      prompt_module: the model's prompt module (for messages and its kind).
      path: the file (for messages).

    Returns:
      `{path: array}` replacing every prompt parameter.

    Raises:
      PromptFileError: the file's form or shapes do not fit the model's prompt; the message names
        both and the gin file to use.
    """
    name = type(prompt_module).__name__ if prompt_module is not None else "model (PROMPT=None)"
    if not shapes:
        raise PromptFileError(
            f"PROMPT_FILE {path} was given, but the {name} has no prompt parameters to load."
        )
    if isinstance(value, Mapping):
        problems = [f"missing {k}" for k in sorted(set(shapes) - set(value))]
        problems += [f"unexpected {k}" for k in sorted(set(value) - set(shapes))]
        problems += [
            f"{k}: {tuple(value[k].shape)} != {tuple(shapes[k])}"
            for k in sorted(set(shapes) & set(value))
            if tuple(value[k].shape) != tuple(shapes[k])
        ]
        if problems:
            raise PromptFileError(
                f"PROMPT_FILE {path} holds prompt parameters that do not fit the model's {name}: "
                f"{'; '.join(problems[:6])}. Use the prompt gin file and macros (PROMPT_LENGTH, "
                "...) of the run that wrote it."
            )
        return {k: np.asarray(v) for k, v in value.items()}
    if set(shapes) != {"prompt"} or getattr(prompt_module, "per_layer", False):
        raise PromptFileError(
            f"PROMPT_FILE {path} holds a prompt array {value.shape}, but the model's {name} is not "
            f"a prompt table (its parameters: {', '.join(sorted(shapes))}), so the array cannot "
            f"replace it. Evaluate a [P, H] prompt with the plain prompt ({PLAIN_GIN}), an "
            f"[N, P, H] one with a PromptBank ({BANK_GIN}); an instance-dependent or per-layer "
            "prompt loads from its run's prompts/step_<N>.npz."
        )
    want = tuple(shapes["prompt"])
    if value.shape[-1] != want[-1] and peft_format.is_adapter(path):
        peft_format.check_width(peft_format.read_config(path), want[-1], str(path))
    if tuple(value.shape) != want:
        raise PromptFileError(
            _array_mismatch(path, tuple(value.shape), tuple(shapes["prompt"]), name)
        )
    return {"prompt": value}


def load_into(trainable: Any, prompt_file: str | os.PathLike, prompt_module: Any) -> Any:
    """Replaces the trainable prompt parameters with a PROMPT_FILE's (shapes checked first).

    Args:
      trainable: the trainable parameters (sharded `jax.Array`s) holding `encoder/prompt/...`.
      prompt_file: the file (see the module docstring).
      prompt_module: the model's prompt module.

    Returns:
      The new trainable tree; every replaced array keeps its dtype and sharding.

    Raises:
      FileNotFoundError, PromptFileError: see `read_prompt_file` and `values_for`.
    """
    current = _flatten(trainable.get("encoder", {}).get("prompt", {}))
    shapes = parameter_shapes(trainable)
    values = values_for(read_prompt_file(prompt_file), shapes, prompt_module, prompt_file)
    placed = {k: _place(values[k], current[k]) for k in current}
    encoder = dict(trainable["encoder"], prompt=_unflatten(placed))
    return dict(trainable, encoder=encoder)


def _place(value: np.ndarray, like: jax.Array) -> jax.Array:
    """`value` as a global array with `like`'s dtype and sharding (every process holds `value`)."""
    value = np.asarray(value, like.dtype)
    return jax.make_array_from_callback(value.shape, like.sharding, lambda index: value[index])


def read_source_prompts(paths: Any) -> np.ndarray:
    """ATTEMPT's SOURCE_PROMPTS: one plain prompt per entry, stacked -> `[k, P, H]`.

    Each entry is a `[P, H]` `.npy`, a PEFT prompt-tuning adapter folder, or a run's MODEL_DIR
    (its `prompts/best`, else its latest export). All must have the same shape.

    Raises:
      PromptFileError: no entries; an entry that is not a plain `[P, H]` prompt (a multi-task
        `[N, P, H]` file, a parameters `.npz`, a run without exports); shapes that differ.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths or [])
    if not paths:
        raise PromptFileError(
            "SOURCE_PROMPTS is empty: list the source prompts (.npy files, run folders or PEFT "
            "adapters) ATTEMPT mixes, e.g. --gin.SOURCE_PROMPTS=\"['a.npy', 'runs/b']\"."
        )
    arrays = []
    for path in paths:
        source = pathlib.Path(path)
        run = ModelDir(source)
        if run.prompts.is_dir():
            exported = run.run_export()
            if exported is None:
                raise PromptFileError(
                    f"SOURCE_PROMPTS entry {path} is a run folder without exported prompts "
                    f"({PROMPTS}/best or {PROMPTS}/step_<N>); train it first or "
                    "give a .npy."
                )
            source = exported
        value = read_prompt_file(source)
        if not isinstance(value, np.ndarray) or value.ndim != 2:
            what = "parameters" if isinstance(value, dict) else f"shape {value.shape}"
            raise PromptFileError(
                f"SOURCE_PROMPTS entry {path} ({source}) holds {what}; ATTEMPT's sources are "
                "plain prompts [P, H] (a prompt-tuning run's export or a PEFT adapter)."
            )
        if arrays and value.shape != arrays[0].shape:
            raise PromptFileError(
                f"SOURCE_PROMPTS entry {path} has shape {value.shape} but {paths[0]} has "
                f"{arrays[0].shape}; every source prompt needs the same [P, H]."
            )
        arrays.append(np.asarray(value, np.float32))
    return np.stack(arrays)  # [k, P, H]


def source_prompts_loader(paths: Any) -> Callable[[], np.ndarray]:
    """Reads SOURCE_PROMPTS now (errors surface before anything runs) -> `() -> [k, P, H]`.

    gin binds `AttemptPrompt.sources = @prompt_files.source_prompts_loader()`: the loader keeps the
    array, so the module needs neither gin nor the files again when it is traced.
    """
    sources = read_source_prompts(paths)
    sources.setflags(write=False)
    return lambda: sources
