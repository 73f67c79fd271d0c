"""Prompt files: reading the arrays a user hands us (`.npy` / `.npz`) with errors that name the
file, and atomic writes.

`numpy.load` on a file that is not an array says "This file contains pickled (object) data ...
allow_pickle" or "Failed to interpret file ... as a pickle", naming neither the file nor the
problem. `read_arrays` looks at the file's first bytes instead and says what the file is not.
Pickles are never loaded (a `.npy` prompt never needs them, and loading one runs code).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # `.npz` files are zip archives of `.npy` members


class PromptFileError(ValueError):
    """A prompt file is missing, not a NumPy array file, or holds the wrong kind of array."""


def _not_an_array(path: pathlib.Path, what: str, reason: str) -> PromptFileError:
    return PromptFileError(
        f"{what} {path} is not a NumPy array file ({reason}). Give a `.npy` file written by "
        "numpy.save (e.g. a run's MODEL_DIR/prompts/step_<N>.npy) or the `.npz` parameter file of "
        "an instance-dependent prompt (MODEL_DIR/prompts/step_<N>.npz)."
    )


def _check_numeric(array: np.ndarray, path: pathlib.Path, what: str) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise PromptFileError(
            f"{what} {path} holds an array of dtype {array.dtype}; a prompt is a float array."
        )
    return array


def read_arrays(
    path: str | os.PathLike, what: str = "PROMPT_FILE"
) -> np.ndarray | dict[str, np.ndarray]:
    """Reads a `.npy` array or the named arrays of a `.npz` file, refusing anything else.

    Args:
      path: the file.
      what: how the user named it, for messages (e.g. "PROMPT_FILE", "--prompt").

    Returns:
      The array (`.npy`), or `{name: array}` (`.npz`).

    Raises:
      FileNotFoundError: no such file.
      PromptFileError: the file is not a NumPy array file (a pickle, text, a truncated or empty
        file), or holds non-numeric data; the message names the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    with path.open("rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head.startswith(ZIP_MAGIC):
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError) as error:
            raise _not_an_array(path, what, f"a damaged .npz archive: {error}") from None
        if not arrays:
            raise _not_an_array(path, what, "an empty .npz archive")
        return {name: _check_numeric(a, path, what) for name, a in arrays.items()}
    if head != NPY_MAGIC:
        reason = "an empty file" if not head else f"it starts with {head!r}, not {NPY_MAGIC!r}"
        if head[:1] == b"\x80":
            reason = "a Python pickle"
        raise _not_an_array(path, what, reason)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = f"a damaged or truncated .npy: {error}"
        if "allow_pickle" in str(error):
            reason = "a .npy of pickled Python objects, not numbers"
        raise _not_an_array(path, what, reason) from None
    return _check_numeric(array, path, what)


def read_npy(path: str | os.PathLike, what: str = "PROMPT_FILE") -> np.ndarray:
    """Reads one `.npy` array (see `read_arrays`); a `.npz` archive is refused.

    Raises:
      FileNotFoundError: no such file.
      PromptFileError: not a `.npy` array file.
    """
    value = read_arrays(path, what)
    if isinstance(value, dict):
        raise PromptFileError(
            f"{what} {path} is a .npz archive of named arrays ({', '.join(sorted(value))}), not "
            "one .npy array."
        )
    return value


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a temporary file next to `path`, then renames it over `path`.

    A reader never sees a half-written file, and an interrupted write leaves the old one. The
    file gets the mode `open` would give it (0666 less the umask; a temporary file is 0600).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)  # a full disk leaves no half-written temporary file behind
        raise
