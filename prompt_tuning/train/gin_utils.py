"""Command-line gin handling shared by the entry points (`train`, `eval`, `infer`).

Flags follow T5X:

    --gin_file=PATH          a gin file; repeatable, parsed in order.
    --gin.NAME=VALUE         a binding, e.g. `--gin.MODEL_DIR="'runs/demo'"` or
                             `--gin.TRAIN_STEPS=100`; later flags override earlier ones.
    --gin_bindings=BINDING   a raw gin binding (`NAME = VALUE`); repeatable.
    --gin_search_paths=A,B   folders searched for gin files and `include`s (always also the
                             working directory and the folder holding the installed
                             `gin_configs` package, so `gin_configs/...` resolves anywhere).

Multi-process runs (T5X's flags; see `distributed.initialize` and the README):

    --coordinator_address=HOST:PORT   process 0's address; with --process_count and
                                      --process_index, joins this process to the run.
    --process_count=N                 number of processes.
    --process_index=I                 this process, 0 .. N-1.
    --multiprocess_gpu                initialize even without the flags above (SLURM, Open MPI).
    --lost_process_timeout=SECONDS    when another process sends no heartbeat for this long
                                      (default 60), exit with status 69 naming it.

SIGTERM/SIGINT stop a run cleanly (exit status 75, `prompt_tuning.faults`).

TPU slices need none of them. Only process 0 writes the config file.

This module and the entry points are the only places that import gin; the library is configured by
the `from __gin__ import dynamic_registration` imports in `gin_configs/`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import gin

from prompt_tuning.faults import Stopped
from prompt_tuning.model_dir import CONFIG_GIN, ModelDir, write_atomic

if TYPE_CHECKING:
    from prompt_tuning.train import builder


def gin_search_root() -> str:
    """The folder holding the `gin_configs` package (package data of this project), which makes
    `gin_configs/<kind>/<file>.gin` resolve: site-packages when installed, the checkout otherwise.

    Raises:
      ModuleNotFoundError: `gin_configs` is not installed beside `prompt_tuning`.
    """
    spec = importlib.util.find_spec("gin_configs")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The gin_configs package is not installed; reinstall prompt_tuning (pip install .)."
        )
    return str(pathlib.Path(next(iter(spec.submodule_search_locations))).parent)


_USAGE = (
    "usage: python -m prompt_tuning.<train|eval|infer> --gin_file=FILE [--gin_file=FILE ...] "
    "[--gin.NAME=VALUE ...] [--gin_bindings='NAME = VALUE' ...] [--gin_search_paths=A,B] "
    "[--coordinator_address=HOST:PORT --process_count=N --process_index=I] [--multiprocess_gpu] "
    "[--lost_process_timeout=SECONDS]"
)
_PROCESS_FLAGS = (
    "--coordinator_address",
    "--process_count",
    "--process_index",
    "--lost_process_timeout",
)
_MACRO_REFERENCE = re.compile(r"%([A-Za-z_][A-Za-z0-9_.]*)")


def split_process_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Takes T5X's multi-process flags out of `argv`.

    Args:
      argv: command-line arguments without the program name.

    Returns:
      (`distributed.initialize` keyword arguments, the remaining arguments).

    Raises:
      ValueError: a flag lacks its value, or a count/index is not an integer.
    """
    flags: dict[str, Any] = {}
    rest, args = [], list(argv)
    while args:
        arg = args.pop(0)
        name, has_value, value = arg.partition("=")
        if name in ("--multiprocess_gpu", "--nomultiprocess_gpu"):
            flags["multiprocess_gpu"] = name == "--multiprocess_gpu" and value.lower() not in (
                "false",
                "0",
            )
            continue
        if name not in _PROCESS_FLAGS:
            rest.append(arg)
            continue
        if not has_value:
            if not args:
                raise ValueError(f"Flag {name} needs a value.\n{_USAGE}")
            value = args.pop(0)
        key = name[2:]
        if key == "lost_process_timeout":
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number of seconds, got {value!r}.") from None
        elif key != "coordinator_address":
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}.") from None
        flags[key] = value
    return flags, rest


def _split_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits `argv` into gin files, bindings and search paths.

    Args:
      argv: command-line arguments without the program name (no multi-process flags).

    Returns:
      (gin files, gin bindings, search paths), each in command-line order.

    Raises:
      ValueError: an argument is not one of the gin flags.
    """
    files, bindings, paths = [], [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(_USAGE)
            sys.exit(0)
        name, has_value, value = arg.partition("=")
        if not has_value and name in ("--gin_file", "--gin_bindings", "--gin_search_paths"):
            if not args:
                raise ValueError(f"Flag {name} needs a value.\n{_USAGE}")
            value = args.pop(0)
        if name == "--gin_file":
            files.append(value)
        elif name == "--gin_bindings":
            bindings.append(value)
        elif name == "--gin_search_paths":
            paths.extend(p for p in value.split(",") if p)
        elif name.startswith("--gin.") and has_value:
            bindings.append(f"{name[len('--gin.') :]} = {value}")
        else:
            raise ValueError(f"Unknown argument {arg!r}.\n{_USAGE}")
    return files, bindings, paths


def parse_gin_flags(argv: Sequence[str]) -> None:
    """Parses gin files and bindings given on the command line into gin's global config.

    Args:
      argv: command-line arguments without the program name (e.g. `sys.argv[1:]`).

    Raises:
      ValueError: an unknown flag, or no `--gin_file` at all.
      IOError: a gin file or include was not found (gin's message names it).
    """
    files, bindings, paths = _split_flags(argv)
    if not files:
        raise ValueError(
            f"Give at least one --gin_file (e.g. gin_configs/runs/smoke.gin).\n{_USAGE}"
        )
    for path in [*paths, os.getcwd(), gin_search_root()]:
        gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)


def _is_required(value: Any) -> bool:
    """Whether a gin value is the `%gin.REQUIRED` placeholder."""
    # A macro bound to `%gin.REQUIRED` evaluates to a reference that prints as that literal.
    return value is gin.REQUIRED or repr(value) == "%gin.REQUIRED"


def check_macros(required: Sequence[str] = ()) -> None:
    """Checks that every macro the config refers to, and every `required` one, has a value.

    Args:
      required: macro names that must be bound to a real value (e.g. "MODEL_DIR").

    Raises:
      ValueError: naming the first macro that is unbound or `%gin.REQUIRED`, and how to set it.
    """
    referenced = [m for m in _MACRO_REFERENCE.findall(gin.config_str()) if m != "gin.REQUIRED"]
    for name in dict.fromkeys([*required, *referenced]):
        try:
            value = gin.query_parameter(f"%{name}")
        except ValueError:
            value = gin.REQUIRED
        if _is_required(value):
            raise ValueError(
                f"Gin macro {name} is required but has no value. Set it in a gin file "
                f"(`{name} = ...`) or on the command line (`--gin.{name}=...`; strings need inner "
                f"quotes, e.g. --gin.MODEL_DIR=\"'runs/x'\")."
            )


def write_config(model_dir: str | None, filename: str) -> None:
    """Writes the parsed gin config to `model_dir/filename` (process 0 only; needs a model_dir)."""
    import jax  # noqa: PLC0415

    if not model_dir or not isinstance(model_dir, str) or jax.process_index() != 0:
        return
    write_atomic(pathlib.Path(model_dir) / filename, gin.config_str().encode(), filename)


def run_main(
    fn: Callable[..., Any],
    argv: Sequence[str] | None = None,
    required_macros: Sequence[str] = (),
    config_filename: str | None = CONFIG_GIN,
) -> Any:
    """Parses gin flags, checks macros and calls the gin-configured `fn`.

    `fn` must be configured by the gin files (dynamic registration); it is called with no arguments.

    Args:
      fn: the library function to run (e.g. `trainer.train`).
      argv: command-line arguments without the program name; default `sys.argv[1:]`.
      required_macros: macros that must have a value before anything runs.
      config_filename: where in MODEL_DIR to write the parsed config (None: do not write).

    Returns:
      What `fn` returns.

    Raises:
      ValueError: bad flags, a process that cannot join the run, or a missing macro (see
        `distributed.initialize`, `parse_gin_flags`, `check_macros`).
    """
    from prompt_tuning.parallel import (
        distributed,
        host_memory,  # noqa: PLC0415
    )

    host_memory.reuse_freed_memory()  # before JAX starts its CPU threads (see host_memory)
    process_flags, argv = split_process_flags(sys.argv[1:] if argv is None else argv)
    distributed.initialize(**process_flags)
    parse_gin_flags(argv)
    check_macros(required_macros)
    if config_filename:
        try:
            model_dir = gin.query_parameter("%MODEL_DIR")
        except ValueError:
            model_dir = None
        write_config(model_dir, config_filename)
    return gin.get_configurable(fn)()


def main(
    fn: Callable[..., Any],
    argv: Sequence[str] | None = None,
    required_macros: Sequence[str] = (),
    config_filename: str | None = CONFIG_GIN,
) -> Any:
    """`run_main`, with configuration errors printed as `error: ...` and exit code 2.

    The body of every entry point (`prompt_tuning.train`, `.eval`, `.infer`).

    Returns:
      What `fn` returns.
    """
    try:
        return run_main(fn, argv, required_macros, config_filename)
    except Stopped as stopped:
        status = stopped.exit_status
        print(f"\n{stopped.message} (exit status {status})", file=sys.stderr, flush=True)
        sys.exit(stopped.exit_status)
    except (ValueError, KeyError, FileNotFoundError, OSError) as error:
        traceback.print_exc()
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"\nerror: {message}", file=sys.stderr)
        sys.exit(2)


# Reading a finished run's config.gin back (the analysis tools in tools/).


class GinConfigError(ValueError):
    """A run's config.gin is missing or binds no needed macro; the message names it and the fix."""


@contextlib.contextmanager
def fresh_gin() -> Iterator[Any]:
    """Clears gin's global config before and after the block (one config is read at a time).

    Yields:
      The `gin` module, for `gin_macro`.
    """
    gin.clear_config()
    try:
        yield gin
    finally:
        gin.clear_config()


_MISSING = object()


def gin_macro(config: Any, name: str, default: Any = _MISSING) -> Any:
    """A macro's value from the parsed config, with `@configurable()` references evaluated.

    Args:
      config: the `gin` module (as `fresh_gin` yields it).
      name: the macro, e.g. "MODEL".
      default: returned when the macro is unbound.

    Raises:
      GinConfigError: the macro is unbound and no default is given.
    """
    try:
        value = config.query_parameter(f"%{name}")
    except ValueError:
        if default is _MISSING:
            raise GinConfigError(f"The gin config does not bind the macro {name}.") from None
        return default
    if hasattr(value, "scoped_configurable_fn"):  # `@fn()`: gin evaluates it
        value = value.scoped_configurable_fn()
    return value


def parse_gin_files(paths: Sequence[str | pathlib.Path], bindings: Sequence[str] = ()) -> None:
    """Parses gin files and bindings into gin's global config (call inside `fresh_gin`)."""
    for folder in (str(pathlib.Path.cwd()), gin_search_root()):
        gin.add_config_file_search_path(folder)
    gin.parse_config_files_and_bindings(
        [str(p) for p in paths], list(bindings), finalize_config=False
    )


def run_config_from_gin(config: Any, model_dir: str | pathlib.Path) -> builder.RunConfig:
    """The run's `builder.RunConfig` from the config gin currently holds (see `read_run_config`).

    Raises:
      GinConfigError: MODEL is not bound.
    """
    from prompt_tuning.train import builder, optimizers  # noqa: PLC0415

    lengths = gin_macro(config, "TASK_FEATURE_LENGTHS", None)
    return builder.RunConfig(
        model_dir=pathlib.Path(model_dir),
        model=gin_macro(config, "MODEL"),
        task=gin_macro(config, "MIXTURE_OR_TASK_NAME", None),
        task_feature_lengths=None if lengths is None else dict(lengths),
        initial_checkpoint_path=gin_macro(config, "INITIAL_CHECKPOINT_PATH", None),
        random_seed=int(gin_macro(config, "RANDOM_SEED", 0)),
        frozen_dtype=gin_macro(config, "FROZEN_DTYPE", None),
        trainable_params_regex=gin_macro(
            config, "TRAINABLE_PARAMS_REGEX", optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX
        ),
        batch_size=gin_macro(config, "BATCH_SIZE", None),
        mixture_or_task_module=gin_macro(config, "MIXTURE_OR_TASK_MODULE", "tasks"),
    )


def read_run_config(model_dir: str | pathlib.Path) -> builder.RunConfig:
    """Parses MODEL_DIR/config.gin (as written by `python -m prompt_tuning.train`) with gin.

    References such as `@pretrained.tiny_t5_checkpoint()` are evaluated, not pattern-matched.

    Args:
      model_dir: the run's MODEL_DIR.

    Returns:
      The run's `builder.RunConfig`; MODEL is built (its prompt module included); fields the
      config.gin does not bind are None (TASK_FEATURE_LENGTHS, BATCH_SIZE, ...) or the trainer's
      defaults.

    Raises:
      GinConfigError: there is no config.gin (runs made by calling `trainer.train` directly write
        none), or it binds no MODEL.
    """
    path = ModelDir(model_dir).config_gin
    if not path.is_file():
        raise GinConfigError(
            f"{path} does not exist. Runs started with `python -m prompt_tuning.train` write it; "
            "for other runs pass the inputs explicitly (e.g. --checkpoint, --task)."
        )
    with fresh_gin() as config:
        parse_gin_files([path])
        return run_config_from_gin(config, model_dir)
