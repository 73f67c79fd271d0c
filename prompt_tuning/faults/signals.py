"""SIGTERM and SIGINT as stop requests (preemption, SLURM time limits, Ctrl-C).

The first signal sets `StopSignals.received`; the run finishes the step it is on, saves and
stops (`agreement`, the trainer). A second signal exits at once with status 128 + its number
(143 for SIGTERM, 130 for SIGINT): every file the project writes is written atomically (orbax
checkpoints into a temporary folder renamed when complete, prompts and JSON through a renamed
temporary file), so the last complete checkpoint is kept.

The signals are read by a thread from `signal.set_wakeup_fd`, written by the C-level handler the
moment a signal arrives: a second signal works even while the main thread is blocked in a long
compilation or collective, where Python-level handlers would wait for it to return.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_QUIT = 0  # written to the pipe by `__exit__` to end the reading thread (no signal is 0)


def _ignore(signum: int, frame: Any) -> None:
    """The Python-level handler: nothing (the reading thread acts)."""


class StopSignals:
    """Turns SIGTERM/SIGINT into a stop request while the context is active.

    Installed only in the main thread (where Python lets signals be handled); elsewhere the
    context does nothing and `received` is never set. The previous handlers and wakeup fd are
    restored on exit.

    Attributes:
      what: the run, as messages name it ("training", "inference", "evaluation").
      received: set by the first signal.
      signal_name: its name ("SIGTERM", "SIGINT"), or None.
    """

    def __init__(self, what: str = "training"):
        self.what = what
        self.received = threading.Event()
        self.signal_name: str | None = None
        self._installed = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = {s: signal.signal(s, _ignore) for s in SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._thread.start()
        self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._installed:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.write(self._write, bytes([_QUIT]))
        self._thread.join()
        os.close(self._read)
        os.close(self._write)
        self._installed = False

    def _watch(self) -> None:
        """Reads signal numbers from the wakeup pipe until `__exit__` writes `_QUIT`."""
        while True:
            signum = os.read(self._read, 1)[0]
            if signum == _QUIT:
                return
            if signum not in SIGNALS:
                continue  # another signal with a Python handler: not ours to act on
            name = signal.Signals(signum).name
            if not self.received.is_set():
                self.signal_name = name
                self.received.set()
                _say(
                    f"{name} received: {self.what} stops after the step it is on, once every "
                    f"process agrees, and saves first. Send {name} again to exit at once "
                    f"(status {128 + signum}, keeping the last complete checkpoint)."
                )
            else:
                _say(
                    f"Second {name}: exiting at once (status {128 + signum}); the last complete "
                    "checkpoint is kept. Run the same command to resume from it."
                )
                os._exit(128 + signum)


def _say(text: str) -> None:
    """Prints to stderr now (a signal message must not wait in a buffer)."""
    print(text, file=sys.stderr, flush=True)
