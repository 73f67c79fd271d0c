"""Compiling the serving programs in the background, smallest first, with progress for /readyz.

A server is *live* as soon as its HTTP listener is up and *ready* once every program of its
warm-up set is compiled. `WarmUp` compiles that set on a few daemon threads (XLA compiles mostly
on one thread, so several programs at once use the cores; tracing holds the GIL and does not
overlap), in the order the engine gives: the smallest buckets first, so requests of one short input
are served first. A request does not wait for readiness: its program is compiled on demand when
the warm-up has not reached it yet (`Engine.program`), and waits only for that one program.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


class WarmUp:
    """Compiles `keys` in order on `threads` daemon threads; `progress()` reports how far it is.

    Attributes:
      keys: the programs to compile, in the order they are compiled.
      error: the first compilation error (`"<program>: <message>"`), else None.
    """

    def __init__(
        self,
        keys: Sequence[Any],
        compile_one: Callable[[Any], Any],
        state_of: Callable[[Any], str],
        label: Callable[[Any], str],
        threads: int = 1,
    ):
        """Plans the warm-up; `start()` starts compiling.

        Args:
          keys: programs, first to compile first.
          compile_one: compiles one key (returns at once if it is compiled already).
          state_of: a key -> "compiled", "compiling" or "pending".
          label: a key -> its name in progress reports.
          threads: programs compiled at once.
        """
        self.keys = list(keys)
        self.error: str | None = None
        self._compile_one = compile_one
        self._state_of = state_of
        self._label = label
        self._next = 0
        self._running = max(1, min(threads, len(self.keys)))
        self._cancelled = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._start: float | None = None
        self._seconds: float | None = None

    def start(self) -> WarmUp:
        """Starts compiling on the threads (once; later calls do nothing)."""
        with self._lock:
            if self._start is not None:
                return self
            self._start = time.perf_counter()
        if not self.keys:
            self._finish()
        for i in range(self._running if self.keys else 0):
            threading.Thread(target=self._work, name=f"pt-serve-warmup-{i}", daemon=True).start()
        return self

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._cancelled or self._next >= len(self.keys):
                    self._running -= 1
                    if self._running == 0:
                        self._finish()
                    return
                key = self.keys[self._next]
                self._next += 1
            try:
                self._compile_one(key)
            except Exception as error:  # noqa: BLE001 (reported by /readyz; the others go on)
                logging.exception("Compiling %s failed", self._label(key))
                with self._lock:
                    self.error = (
                        self.error or f"{self._label(key)}: {type(error).__name__}: {error}"
                    )

    def _finish(self) -> None:
        self._seconds = time.perf_counter() - self._start
        self._done.set()

    @property
    def started(self) -> bool:
        """`start` was called."""
        return self._start is not None

    @property
    def ready(self) -> bool:
        """Every program is compiled (and none failed)."""
        return self._done.is_set() and self.error is None and not self._cancelled

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the warm-up has finished (or `timeout` s); returns whether it is ready."""
        self._done.wait(timeout)
        return self.ready

    def cancel(self) -> None:
        """Compiles nothing more (programs being compiled finish); for shutdown."""
        with self._lock:
            self._cancelled = True

    def progress(self) -> dict[str, Any]:
        """`{"ready", "compiled", "total", "seconds", "error", "programs": {state: [names]}}`.

        `programs` lists the compiled, compiling and pending programs by name (e.g. "greedy B=1
        T=64 S=64"), in compilation order; `seconds` is the time since the warm-up started (0 before
        `start`; its duration once finished).
        """
        states: dict[str, list[str]] = {"compiled": [], "compiling": [], "pending": []}
        for key in self.keys:
            states[self._state_of(key)].append(self._label(key))
        if self._seconds is not None:
            seconds = self._seconds
        else:
            seconds = 0.0 if self._start is None else time.perf_counter() - self._start
        return {
            "ready": self.ready,
            "compiled": len(states["compiled"]),
            "total": len(self.keys),
            "seconds": round(seconds, 3),
            "error": self.error,
            "programs": states,
        }
