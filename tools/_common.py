"""The command line shared by the analysis tools in tools/ (their logic lives in the library).

A run's MODEL_DIR is read with `prompt_tuning.model_dir`, its config.gin with
`prompt_tuning.train.gin_utils.read_run_config`; what is here is about the command line:

- `ToolError`: a flag is missing or inconsistent;
- `cli`: runs a tool's `main` and turns input errors into `error: ...` and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


class ToolError(ValueError):
    """A tool's input is missing or inconsistent; the message names it and the fix."""


def cli(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Runs a tool's `main` on `sys.argv`; input errors print `error: ...` and exit with code 2.

    Library errors (AnalysisError, GinConfigError, CheckpointError, ...) are ValueErrors too.
    """
    try:
        main(None)
    except (ValueError, FileNotFoundError, KeyError) as error:  # ToolError, CheckpointError too
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
