"""Host memory of XLA:CPU programs: reuse a step's buffers instead of faulting in fresh pages.

XLA:CPU allocates the temporary buffer of each execution (every activation of a training step:
3.0 GiB for T5 1.1 small at batch 32) with `posix_memalign`, on one of its worker threads, and frees
it when the execution ends. glibc's malloc serves a request that large with `mmap` and gives it
back with `munmap`: every step then faults in and the kernel zeroes gigabytes of fresh pages
(800k minor page faults, 1.1 s of system time in a 2.3 s step on a 2-core machine). Raising
`M_MMAP_THRESHOLD` does not help on its own: a worker thread's arena is made of 64 MiB heaps, and
glibc falls back to `mmap` for anything larger, whatever the thresholds.

`reuse_freed_memory()` sets glibc's malloc (`mallopt`) so that freed memory is kept and reused:
one arena (`M_ARENA_MAX=1`: every thread allocates from the main heap), no `mmap` for large
requests (`M_MMAP_MAX=0`) and no trimming of the heap's top (`M_TRIM_THRESHOLD` unlimited). After
the first step or two, steps usually allocate no new pages. `release_free_memory()`
(`malloc_trim`) gives the pages of freed blocks back to the kernel; call it after compiling, whose
freed memory would otherwise stay resident. The trade-off (docs/performance.md, "round two"):
when small allocations split a freed buffer, a step faults in a second one, which then stays
resident beside the first. That happens more often when the step was loaded from JAX's persistent
compilation cache instead of compiled (fewer small free blocks on the heap: 22% of the steps of a
tiny T5 faulted afresh against 12%, counted by hand over 6 and 10 runs of the benchmark's worker).

Both are no-ops where the C library is not glibc. `reuse_freed_memory` has full effect only before
JAX's CPU client has started its threads (threads keep the arena they first allocated from): the
entry points call it first thing. `PROMPT_TUNING_HOST_MALLOC` chooses: `auto` (the default) reuses
only where JAX will run on the CPU, `reuse` always, `system` never. On a GPU or TPU host the
step's buffers live on the device, and one malloc arena shared by every thread would serialise
the host's many compiler and input threads on its lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

ENV_VAR = "PROMPT_TUNING_HOST_MALLOC"
_CHOICES = ("auto", "reuse", "system")
# Device files of accelerators JAX would pick over the CPU when JAX_PLATFORMS is unset: NVIDIA's
# driver, TPU v2-v4 (accel) and TPU v5e and later (vfio).
ACCELERATOR_DEVICES = ("/dev/nvidiactl", "/dev/accel0", "/dev/vfio/0")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc's `libc`, or None on other C libraries (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc


def jax_runs_on_cpu() -> bool:
    """Whether JAX will run on the CPU: JAX_PLATFORMS's first entry when it is set ("cpu", or
    "cuda,cpu"), else whether this host has no accelerator device (`ACCELERATOR_DEVICES`)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(os.path.exists(path) for path in ACCELERATOR_DEVICES)


def _choice() -> str:
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not one of {', '.join(_CHOICES)}: 'auto' (the "
            "default) keeps freed host memory for the next step where JAX runs on the CPU, 'reuse' "
            "keeps it everywhere, 'system' leaves malloc as it is."
        )
    if choice == "auto":
        return "reuse" if jax_runs_on_cpu() else "system"
    return choice


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse (see the module docstring).

    Call it before JAX starts its CPU client (the first `jax.devices()` or computation); later,
    threads that already allocated keep their own arenas and their large buffers stay `mmap`ed.

    Returns:
      Whether the settings were applied (False: not glibc, `PROMPT_TUNING_HOST_MALLOC=system`, or
      `auto` where JAX will run on an accelerator).

    Raises:
      ValueError: `PROMPT_TUNING_HOST_MALLOC` is not "auto", "reuse" or "system".
    """
    choice, libc = _choice(), _glibc()
    if libc is None or choice == "system":
        return False
    # mallopt's value is a C int: -1 converts to SIZE_MAX inside glibc (an unlimited threshold).
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    applied = all([libc.mallopt(param, value) for param, value in settings])  # each one tried
    if not applied:
        logging.warning("glibc's mallopt refused a setting; host buffers may be mmap'ed per step.")
    return applied


def release_free_memory() -> bool:
    """Gives the pages of freed heap blocks back to the kernel (glibc's `malloc_trim(0)`).

    Returns:
      Whether any memory was released (False also where the C library is not glibc).
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
