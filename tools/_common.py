"""Shared pieces of the analysis tools in tools/: a run's gin config, its frozen model, the CLI.

A run's MODEL_DIR (its layout, prompts, checkpoints and metrics) is read with
`prompt_tuning.model_dir`; what is here needs gin or is about the command line:

- `read_run_config`: MODEL, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, INITIAL_CHECKPOINT_PATH,
  ... parsed from MODEL_DIR/config.gin with gin (references such as
  `@pretrained.tiny_t5_checkpoint()` are evaluated, not pattern-matched);
- `frozen_params` / `frozen_embedding`: the frozen T5 of a run (its checkpoint, or the random
  model the trainer initialized from RANDOM_SEED when INITIAL_CHECKPOINT_PATH is None);
- `cli`: runs a tool's `main` and turns configuration errors into `error: ...` and exit code 2.

Letters: P prompt length, H model dim, V vocabulary size.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prompt_tuning.train import builder

EMBEDDING = "token_embedder/embedding"


class ToolError(ValueError):
    """A tool's input is missing or inconsistent; the message names it and the fix."""


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
    from prompt_tuning.model_dir import ModelDir  # noqa: PLC0415

    path = ModelDir(model_dir).config_gin
    if not path.is_file():
        raise ToolError(
            f"{path} does not exist. Runs started with `python -m prompt_tuning.train` write it; "
            "for other runs pass the inputs explicitly (e.g. --checkpoint, --task)."
        )
    with fresh_gin() as gin:
        parse_gin_files([path])
        return run_config_from_gin(gin, model_dir)


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


def cli(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Runs a tool's `main` on `sys.argv`; input errors print `error: ...` and exit with code 2."""
    try:
        main(None)
    except (ValueError, FileNotFoundError, KeyError) as error:  # ToolError, CheckpointError too
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
