"""Noticing a lost process of a multi-process run (killed, crashed, host gone).

Without it, the survivors of a run whose process was killed (kill -9, an out-of-memory kill, a
lost host) wait in their next collective until JAX's coordination service misses the lost
process's heartbeats (`heartbeat_timeout_seconds`, 100 s by default) and aborts them with a
message that does not say which process was lost.

`PeerWatchdog` is a thread in every process that writes a counter into the coordination
service's key-value store every `interval` seconds and reads everyone's. A process whose counter
has not moved for `timeout` seconds is lost: the watchdog prints which one and exits this
process with `EXIT_LOST_PROCESS` (69) within `timeout + interval` seconds of the loss, whatever
the main thread is waiting on. A process that exits through Python (normally, on an error, or
stopped by a signal) first marks itself done, so the others do not count it lost.

One case is JAX's own: when process 0, which hosts the coordination service, dies, JAX aborts
every other process at once (status 134, "Terminating process because the JAX distributed service
detected fatal errors ... another task died"); Python gets no say. `describe_coordinator_loss`
is the line the run prints at start so that the log explains it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any

from prompt_tuning.faults import EXIT_LOST_PROCESS

_PREFIX = "prompt_tuning/heartbeat/"
_DONE = "done"
DEFAULT_TIMEOUT = 60.0


def describe_coordinator_loss() -> str:
    """What the log says about a lost process 0 (JAX, not the watchdog, stops the others)."""
    return (
        "If process 0 (the coordinator) is lost, JAX stops the other processes at once with "
        "status 134 ('the JAX distributed service detected fatal errors'); if another process is "
        "lost, the others stop within the lost-process timeout with status 69 and name it."
    )


class PeerWatchdog:
    """Exits this process when another process of the run stops sending heartbeats.

    Attributes:
      timeout: seconds without a heartbeat after which a process counts as lost.
      interval: seconds between heartbeats (and checks).
    """

    def __init__(
        self,
        client: Any,
        process_index: int,
        process_count: int,
        timeout: float = DEFAULT_TIMEOUT,
        exit_fn: Any = None,
    ):
        """Starts the heartbeat thread.

        Args:
          client: JAX's `DistributedRuntimeClient` (its key-value store).
          process_index: this process.
          process_count: the number of processes.
          timeout: the lost-process timeout in seconds (`--lost_process_timeout`).
          exit_fn: called with the exit status when a process is lost (default `os._exit`).
        """
        self.timeout = float(timeout)
        self.interval = min(max(self.timeout / 6, 0.1), 5.0)
        self._client = client
        self._me = process_index
        self._peers = [p for p in range(process_count) if p != process_index]
        self._count = process_count
        self._exit = exit_fn or os._exit
        self._stop = threading.Event()
        self._exiting = False
        self._thread = threading.Thread(target=self._run, name="peer-watchdog", daemon=True)
        self._thread.start()
        atexit.register(self.mark_done)

    def mark_done(self) -> None:
        """Tells the others this process is exiting on purpose (registered with `atexit`).

        The thread keeps watching: a survivor waiting at JAX's shutdown barrier for a lost
        process still exits within the timeout.
        """
        self._exiting = True
        try:
            self._client.key_value_set(f"{_PREFIX}{self._me}", _DONE, allow_overwrite=True)
        except Exception:  # noqa: BLE001 (the coordinator may be gone already)
            pass

    def stop(self) -> None:
        """Stops the thread (tests)."""
        atexit.unregister(self.mark_done)
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        beat, start = 0, time.monotonic()
        seen = {p: (None, start) for p in self._peers}  # value, when it last changed
        while not self._stop.wait(self.interval):
            beat += 1
            now = time.monotonic()
            try:
                if not self._exiting:
                    self._client.key_value_set(f"{_PREFIX}{self._me}", str(beat), True)
                values = dict(self._client.key_value_dir_get(_PREFIX))
            except Exception:  # noqa: BLE001 (the coordinator is gone: JAX stops this process)
                continue
            for peer in self._peers:
                value = values.get(f"{_PREFIX}{peer}")
                if value == _DONE:
                    seen[peer] = (value, now)
                elif value != seen[peer][0]:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] > self.timeout:
                    self._lost(peer, now - seen[peer][1])
                    return

    def _lost(self, peer: int, silent: float) -> None:
        print(
            f"Lost process {peer} of {self._count}: no heartbeat for {silent:.0f} s (it was "
            "killed, crashed, or its host is unreachable). Stopping process "
            f"{self._me} now (status {EXIT_LOST_PROCESS}) instead of waiting in a collective. "
            f"Restart all {self._count} processes with the same command to resume from the "
            "last checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        self._exit(EXIT_LOST_PROCESS)
