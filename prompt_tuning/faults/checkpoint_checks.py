"""Checks of MODEL_DIR and its checkpoints, with messages that name the problem and the fix.

orbax 0.12.8 reads a damaged checkpoint step folder (`checkpoints/<step>/`) without complaint
until it restores it, and then fails obscurely: a cut-short `state/_METADATA` or `meta/metadata`
raises a bare `JSONDecodeError`, a missing `state/_METADATA` a `TypeError`, a missing item a
`KeyError`, a cut-short or missing data file a tensorstore `ValueError` (OUT_OF_RANGE, DATA_LOSS,
NOT_FOUND). A run of another prompt or model shape fails on the first mismatched array with a hint
about padding (`strict=False`) that does not apply to a resume. A full disk during a save surfaces
as a tensorstore `ValueError` from a background thread. This module turns each into an error that
says which folder or file, what is wrong, and what to do:

  * `step_problem`: what is missing or does not parse in a step folder (before restoring);
  * `check_fits`: the saved arrays against this run's (both shapes, every differing array);
  * `check_model_dir_writable`: MODEL_DIR can be created and written (a real write, so it holds
    for root, for whom permission bits do not);
  * `write_error`: a failed save, with the file and the OS error it hit.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import tempfile
from typing import Any

import jax

ITEMS = ("state", "meta")  # the items of every step folder (`checkpoints.TrainCheckpointer`)
DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class DamagedCheckpointError(ValueError):
    """No intact checkpoint to resume from: each damaged step folder and what is wrong with it."""


class CheckpointMismatchError(ValueError):
    """MODEL_DIR's checkpoint holds a run of another model or prompt (both shapes named)."""


class CheckpointWriteError(OSError):
    """MODEL_DIR (or a file in it) cannot be written: read-only, not a folder, or a full disk."""


def step_problem(step_dir: pathlib.Path) -> str | None:
    """What is missing or does not parse in a checkpoint step folder, or None.

    Reads only the small metadata files; a cut-short data file is found when it is restored.

    Args:
      step_dir: MODEL_DIR/checkpoints/<step>.

    Returns:
      A phrase such as "the item 'meta' is missing", or None when the folder looks complete.
    """
    for item in ITEMS:
        if not (step_dir / item).is_dir():
            return f"the item '{item}' is missing (no folder {step_dir / item})"
    for name in ("meta/metadata", "state/_METADATA"):
        problem = _json_problem(step_dir / name)
        if problem:
            return problem
    return None


def _json_problem(path: pathlib.Path) -> str | None:
    """Why `path` is not a JSON object, or None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as error:
        return f"{path} cannot be read ({error.strerror})"
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f"{error.msg} at byte {error.pos}" if hasattr(error, "msg") else str(error)
        return f"{path} does not parse as JSON ({where} of {len(data)}: cut short?)"
    if not isinstance(value, dict):
        return f"{path} does not hold a JSON object"
    return None


def restore_problem(error: BaseException) -> str:
    """A short description of an orbax/tensorstore read failure (its first line, trimmed)."""
    text = str(error).split("[tensorstore_spec=")[0].strip()
    return f"reading it failed: {type(error).__name__}: {text[:400]}"


def _path_str(path: tuple[Any, ...]) -> str:
    """'params/encoder/prompt/prompt' for a jax key path (dict keys, indices or attributes)."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{path: (shape, dtype name)} of the arrays (or array metadata) in `tree`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(p): (tuple(x.shape), str(x.dtype)) for p, x in leaves}


def _format(shape: tuple[int, ...], dtype: str) -> str:
    return f"[{', '.join(map(str, shape))}] {dtype}"


def fit_problems(saved: Any, wanted: Any) -> list[str]:
    """The differences between a checkpoint's arrays and this run's, one line each.

    Args:
      saved: the checkpoint's tree of array metadata (orbax `item_metadata(step).state`).
      wanted: this run's tree of arrays or `ShapeDtypeStruct`s (the `TrainState`).

    Returns:
      Lines such as "params/encoder/prompt/prompt: checkpoint [4, 32] float32, this run [8, 32]
      float32" (empty when every array matches).
    """
    old, new = _shapes(saved), _shapes(wanted)
    lines = []
    for path in sorted(set(old) | set(new)):
        if path not in new:
            lines.append(f"{path}: checkpoint {_format(*old[path])}, not in this run")
        elif path not in old:
            lines.append(f"{path}: not in the checkpoint, this run {_format(*new[path])}")
        elif old[path] != new[path]:
            lines.append(
                f"{path}: checkpoint {_format(*old[path])}, this run {_format(*new[path])}"
            )
    return lines


def check_fits(saved: Any, wanted: Any, step_dir: pathlib.Path, model_dir: str) -> None:
    """Raises `CheckpointMismatchError` (both shapes of each array) unless the trees match.

    Raises:
      CheckpointMismatchError: another model, prompt or optimizer made the checkpoint.
    """
    lines = fit_problems(saved, wanted)
    if not lines:
        return
    shown = "\n  ".join(lines[:12] + ([f"... {len(lines) - 12} more"] if len(lines) > 12 else []))
    raise CheckpointMismatchError(
        f"MODEL_DIR {model_dir} holds a run of another model, prompt or optimizer "
        f"({step_dir}):\n  {shown}\nUse another MODEL_DIR for this configuration, or the "
        "configuration that made the run (MODEL, the prompt's length, TRAINABLE_PARAMS_REGEX, "
        "the optimizer) to resume it."
    )


def check_model_dir_writable(model_dir: str | os.PathLike) -> None:
    """Creates MODEL_DIR and writes (then removes) a small file in it, before any training.

    A real write, not `os.access`: root passes permission checks, not a read-only mount. Remote
    paths (`gs://...`) are left to orbax.

    Raises:
      CheckpointWriteError: MODEL_DIR cannot be created or written (the path, the OS error and
        the fix).
    """
    if "://" in os.fspath(model_dir):
        return
    path = pathlib.Path(model_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write_check.", dir=path)
        try:
            os.write(handle, b"MODEL_DIR write check\n")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        where = error.filename or path
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            cause = "a file stands where a folder is expected"
        else:
            cause = error.strerror or str(error)
        raise CheckpointWriteError(
            error.errno,
            f"MODEL_DIR {model_dir} is not writable: {cause} ({where}). Point MODEL_DIR at a "
            "writable folder (--gin.MODEL_DIR=...), or fix that path (permissions, a read-only "
            "mount, a full disk).",
        ) from error


_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_FAILED_FILE = re.compile(r'Failed writing: "([^"]+)"')


def write_error(error: Exception, what: str, path: pathlib.Path, kept: str) -> Exception:
    """The `CheckpointWriteError` for a failed save of `what` into `path`, or `error` itself.

    Args:
      error: what orbax, tensorstore or Python raised (an `OSError`, or a tensorstore
        `ValueError` carrying `os_error_code='N'`).
      what: e.g. "the checkpoint of step 4".
      path: the folder or file written.
      kept: e.g. "the checkpoint of step 2 is intact".

    Returns:
      A `CheckpointWriteError` when the error is a disk or permission failure, else `error`
      itself (the caller re-raises it unchanged).
    """
    code, where = None, None
    if isinstance(error, OSError):
        code, where = error.errno, error.filename
    else:
        found = _OS_ERROR_CODE.search(str(error))
        code = int(found.group(1)) if found else None
        failed = _FAILED_FILE.search(str(error))
        where = failed.group(1) if failed else None
    if code not in DISK_ERRNOS:
        return error
    return CheckpointWriteError(
        code,
        f"Could not write {what} to {path}: {os.strerror(code)} ({where or path}). Nothing of "
        f"it was kept; {kept}. Free space on that disk (or raise the file-size limit, "
        "`ulimit -f`, or make MODEL_DIR writable), or point MODEL_DIR elsewhere, then run the "
        "same command again to resume.",
    )
