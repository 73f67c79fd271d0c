"""Shared pieces of the analysis tools in tools/: a run's prompts, its gin config, its frozen model.

A training run's MODEL_DIR holds `config.gin` (the operative gin config written by
`python -m prompt_tuning.train`), `prompts/step_<N>.npy` and `prompts/best.npy` (the prompt
[P, H], folded for DPT/residual prompts), orbax checkpoints and `metrics.jsonl`. The tools read
these with the functions here:

- `resolve_prompt_path` / `load_prompt`: a prompt from a `.npy` file, a PEFT prompt-tuning adapter
  folder (`prompt_tuning.prompts.peft_format`) or a MODEL_DIR (latest, `step`, or best);
  `is_run_dir` tells a MODEL_DIR from an adapter folder;
- `read_run_config`: MODEL, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, INITIAL_CHECKPOINT_PATH,
  ... parsed from MODEL_DIR/config.gin with gin (references such as
  `@pretrained.tiny_t5_checkpoint()` are evaluated, not pattern-matched);
- `frozen_params` / `frozen_embedding`: the frozen T5 of a run (its checkpoint, or the random
  model the trainer initialized from RANDOM_SEED when INITIAL_CHECKPOINT_PATH is None);
- `read_metrics`: metrics.jsonl records;
- `cli`: runs a tool's `main` and turns configuration errors into `error: ...` and exit code 2.

Letters: P prompt length, H model dim, V vocabulary size.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prompt_tuning.train import builder

CONFIG_GIN = "config.gin"
METRICS_JSONL = "metrics.jsonl"
PROMPTS = "prompts"
EMBEDDING = "token_embedder/embedding"
_FORMS = (".npy", ".npz")  # see prompt_tuning.train.prompt_files


class ToolError(ValueError):
    """A tool's input is missing or inconsistent; the message names it and the fix."""


def prompt_files(model_dir: str | pathlib.Path) -> dict[int, pathlib.Path]:
    """The exported prompts of a run, `{step: MODEL_DIR/prompts/step_<step>.npy}` (`.npz` for
    instance-dependent and per-layer prompts), by step (`train.prompt_files.exported_steps`)."""
    from prompt_tuning.train import prompt_files as files  # noqa: PLC0415

    return files.exported_steps(model_dir)


def is_adapter(path: str | pathlib.Path) -> bool:
    """Whether `path` is a PEFT prompt-tuning adapter folder (read like a prompt file)."""
    from prompt_tuning.prompts import peft_format  # noqa: PLC0415

    return peft_format.is_adapter(path)


def is_run_dir(path: str | pathlib.Path) -> bool:
    """Whether `path` is a folder standing for a training run (a folder, not an adapter)."""
    return pathlib.Path(path).is_dir() and not is_adapter(path)


def resolve_prompt_path(
    model_dir: str | pathlib.Path | None = None,
    prompt: str | pathlib.Path | None = None,
    step: int | None = None,
    best: bool = False,
) -> pathlib.Path:
    """The prompt file a tool works on: `prompt` itself, or one of MODEL_DIR's exported prompts.

    Args:
      model_dir: a training run's MODEL_DIR (used when `prompt` is None).
      prompt: a prompt file (`.npy` [P, H] or [N, P, H], or a parameters `.npz`) or a PEFT
        prompt-tuning adapter folder.
      step: MODEL_DIR/prompts/step_<step>.npy (default: the latest step).
      best: MODEL_DIR/prompts/best.npy instead (the early-stopping pick).

    Returns:
      The path of the `.npy` (or `.npz`) file.

    Raises:
      ToolError: neither or both of `model_dir` and `prompt`, both `step` and `best`, or the
        requested prompt does not exist (the available steps are listed).
    """
    if (model_dir is None) == (prompt is None):
        raise ToolError("Give exactly one of --model_dir (a training run) or --prompt (a .npy).")
    if step is not None and best:
        raise ToolError("Give at most one of --step and --best.")
    if prompt is not None:
        path = pathlib.Path(prompt)
        if not (path.is_file() or is_adapter(path)):
            raise ToolError(f"Prompt file {path} does not exist (nor is it a PEFT adapter folder).")
        return path
    model_dir = pathlib.Path(model_dir)
    if best:
        found = [model_dir / PROMPTS / f"best{suffix}" for suffix in _FORMS]
        found = [path for path in found if path.is_file()]
        if not found:
            raise ToolError(
                f"{model_dir / PROMPTS}/best.npy does not exist: the run has no best prompt (it is "
                "written at the first evaluation; EVAL_PERIOD > 0). Use --step or the latest "
                "prompt instead."
            )
        return found[0]
    steps = prompt_files(model_dir)
    if not steps:
        raise ToolError(
            f"MODEL_DIR {model_dir} holds no prompts/step_<N>.npy (or .npz). Is it the MODEL_DIR "
            "of a training run that saved at least once?"
        )
    if step is None:
        return steps[max(steps)]
    if step not in steps:
        raise ToolError(
            f"MODEL_DIR {model_dir} has no prompt for step {step}; saved steps: {sorted(steps)}."
        )
    return steps[step]


@contextlib.contextmanager
def fresh_gin() -> Iterator[Any]:
    """Clears gin's global config before and after the block (tools parse one config at a time)."""
    import gin  # noqa: PLC0415

    gin.clear_config()
    try:
        yield gin
    finally:
        gin.clear_config()


_MISSING = object()


def gin_macro(gin: Any, name: str, default: Any = _MISSING) -> Any:
    """A macro's value from the parsed config, with `@configurable()` references evaluated.

    Raises:
      ToolError: the macro is unbound and no default is given.
    """
    try:
        value = gin.query_parameter(f"%{name}")
    except ValueError:
        if default is _MISSING:
            raise ToolError(f"The gin config does not bind the macro {name}.") from None
        return default
    if hasattr(value, "scoped_configurable_fn"):  # `@fn()`: gin evaluates it
        value = value.scoped_configurable_fn()
    return value


def parse_gin_files(paths: Sequence[str | pathlib.Path], bindings: Sequence[str] = ()) -> None:
    """Parses gin files and bindings into gin's global config (call inside `fresh_gin`)."""
    import gin  # noqa: PLC0415

    from prompt_tuning.train import gin_utils  # noqa: PLC0415

    for folder in (str(pathlib.Path.cwd()), gin_utils.gin_search_root()):
        gin.add_config_file_search_path(folder)
    gin.parse_config_files_and_bindings(
        [str(p) for p in paths], list(bindings), finalize_config=False
    )


def run_config_from_gin(gin: Any, model_dir: str | pathlib.Path) -> builder.RunConfig:
    """The run's `builder.RunConfig` from the config gin currently holds (see `read_run_config`).

    Raises:
      ToolError: MODEL is not bound.
    """
    from prompt_tuning.train import builder, optimizers  # noqa: PLC0415

    lengths = gin_macro(gin, "TASK_FEATURE_LENGTHS", None)
    return builder.RunConfig(
        model_dir=pathlib.Path(model_dir),
        model=gin_macro(gin, "MODEL"),
        task=gin_macro(gin, "MIXTURE_OR_TASK_NAME", None),
        task_feature_lengths=None if lengths is None else dict(lengths),
        initial_checkpoint_path=gin_macro(gin, "INITIAL_CHECKPOINT_PATH", None),
        random_seed=int(gin_macro(gin, "RANDOM_SEED", 0)),
        frozen_dtype=gin_macro(gin, "FROZEN_DTYPE", None),
        trainable_params_regex=gin_macro(
            gin, "TRAINABLE_PARAMS_REGEX", optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX
        ),
        batch_size=gin_macro(gin, "BATCH_SIZE", None),
        mixture_or_task_module=gin_macro(gin, "MIXTURE_OR_TASK_MODULE", "tasks"),
    )


def read_run_config(model_dir: str | pathlib.Path) -> builder.RunConfig:
    """Parses MODEL_DIR/config.gin (as written by `python -m prompt_tuning.train`) with gin.

    Args:
      model_dir: the run's MODEL_DIR.

    Returns:
      The run's `builder.RunConfig`; MODEL is built (its prompt module included); fields the
      config.gin does not bind are None (TASK_FEATURE_LENGTHS, BATCH_SIZE, ...) or the trainer's
      defaults.

    Raises:
      ToolError: there is no config.gin (runs made by calling `trainer.train` directly write
        none), or it binds no MODEL.
    """
    path = pathlib.Path(model_dir) / CONFIG_GIN
    if not path.is_file():
        raise ToolError(
            f"{path} does not exist. Runs started with `python -m prompt_tuning.train` write it; "
            "for other runs pass the inputs explicitly (e.g. --checkpoint, --task)."
        )
    with fresh_gin() as gin:
        parse_gin_files([path])
        return run_config_from_gin(gin, model_dir)


def has_run_config(model_dir: str | pathlib.Path | None) -> bool:
    """Whether `model_dir` holds a config.gin."""
    return model_dir is not None and (pathlib.Path(model_dir) / CONFIG_GIN).is_file()


def frozen_params(run: builder.RunConfig, checkpoint: str | None = None) -> dict[str, Any]:
    """The frozen T5 parameters of a run, as numpy arrays (`inference.load_frozen_params`).

    They come from `checkpoint`, else the run's INITIAL_CHECKPOINT_PATH, else the random model the
    trainer initialized from RANDOM_SEED.

    Args:
      run: the run's config.
      checkpoint: a frozen T5 checkpoint overriding INITIAL_CHECKPOINT_PATH.

    Returns:
      The frozen parameter tree (no prompt parameters).
    """
    import jax  # noqa: PLC0415

    from prompt_tuning.predict import inference  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    frozen = inference.load_frozen_params(
        PromptModel(run.model),
        run.task_feature_lengths or {},
        checkpoint or run.initial_checkpoint_path,
        run.random_seed,
        run.trainable_params_regex,
        run.frozen_dtype,
    )
    return jax.tree.map(np.asarray, jax.device_get(frozen))


def frozen_embedding(
    checkpoint: str | None = None, run: builder.RunConfig | None = None
) -> np.ndarray:
    """The frozen model's token embedding `token_embedder/embedding` [V, H] as float32.

    Args:
      checkpoint: any checkpoint `prompt_tuning.t5.checkpoints.read_variable` reads (HF, legacy
        T5X, orbax); wins over `run`.
      run: a run whose config.gin names INITIAL_CHECKPOINT_PATH (or, without one, whose random
        frozen model is rebuilt from RANDOM_SEED).

    Returns:
      The embedding table.

    Raises:
      ToolError: neither input is given.
    """
    from prompt_tuning import t5  # noqa: PLC0415

    if checkpoint is None:
        if run is None:
            raise ToolError(
                "No frozen model: pass --checkpoint (a T5X or Hugging Face checkpoint) or a "
                "--model_dir whose config.gin names INITIAL_CHECKPOINT_PATH."
            )
        if run.initial_checkpoint_path is None:
            return np.asarray(frozen_params(run)["token_embedder"]["embedding"], np.float32)
        checkpoint = run.initial_checkpoint_path
    return np.asarray(t5.checkpoints.read_variable(checkpoint, EMBEDDING), np.float32)


def _checkpoint_manager(model_dir: str | pathlib.Path, best: bool) -> Any:
    """An orbax manager (used to read) over MODEL_DIR/checkpoints (or best/).

    Raises:
      ToolError: the folder does not exist.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415

    from prompt_tuning.train import checkpoints  # noqa: PLC0415

    directory = pathlib.Path(model_dir) / (checkpoints.BEST if best else checkpoints.CHECKPOINTS)
    if not directory.is_dir():
        raise ToolError(f"{directory} does not exist: the run kept no such checkpoint.")
    options = ocp.CheckpointManagerOptions(create=False)
    return ocp.CheckpointManager(directory.resolve(), options=options, item_names=("state", "meta"))


def checkpoint_steps(model_dir: str | pathlib.Path, best: bool = False) -> list[int]:
    """The steps of the orbax checkpoints a run kept in checkpoints/ (or best/), ascending."""
    manager = _checkpoint_manager(model_dir, best)
    try:
        return sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()


def read_metrics(model_dir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of MODEL_DIR/metrics.jsonl, in file order.

    Raises:
      ToolError: the file is missing.
      ValueError: a line is not JSON (named).
    """
    from prompt_tuning.predict import inference  # noqa: PLC0415

    path = pathlib.Path(model_dir) / METRICS_JSONL
    if not path.is_file():
        raise ToolError(f"{path} does not exist; is {model_dir} a training run's MODEL_DIR?")
    return inference.read_jsonl(path)


def last_per_step(records: Sequence[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The records of one kind ("train" or "eval"), one per step, sorted by step.

    A resumed run appends to metrics.jsonl, so a step may appear twice; the last record wins.
    """
    by_step = {int(r["step"]): dict(r) for r in records if r.get("kind") == kind}
    return [by_step[step] for step in sorted(by_step)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (`|` inside cells escaped)."""
    cell = lambda value: str(value).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def cli(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Runs a tool's `main` on `sys.argv`; input errors print `error: ...` and exit with code 2."""
    try:
        main(None)
    except (ValueError, FileNotFoundError, KeyError) as error:  # ToolError, CheckpointError too
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
