"""Preemption and failures: stopping cleanly on SIGTERM/SIGINT, and noticing a lost process.

- `signals.StopSignals`: the first SIGTERM or SIGINT asks the run to stop at the next step (or
  batch) boundary; a second one exits at once with status 128 + the signal's number.
- `agreement.StopAgreement`: every process of a multi-process run stops at the same boundary, even
  when the signal reached only one of them.
- `watchdog.PeerWatchdog`: a process that stops sending heartbeats (killed, crashed, host lost) is
  named, and the others exit with `EXIT_LOST_PROCESS` instead of waiting in a collective.
- `batches.stop_at_batches`: evaluation and inference runs check for a stop between batches.
- `checkpoint_checks`: a damaged checkpoint, a run of another shape, an unwritable MODEL_DIR and a
  full disk named with the path, the problem and the fix (used by `train.checkpoints`).

Exit statuses (the README's "Preemption and failures" section and docs/failures.md):

    75 (EX_TEMPFAIL)     stopped on a signal after saving: rerun the same command to resume.
    69 (EX_UNAVAILABLE)  another process of the run was lost: restart every process.
    128 + N              a second signal N (143 for SIGTERM, 130 for SIGINT): exited at once,
                         keeping the last complete checkpoint.
"""

from __future__ import annotations

EXIT_STOPPED = 75
EXIT_LOST_PROCESS = 69


class Stopped(Exception):  # noqa: N818 (a stop, not an error)
    """A run stopped cleanly on SIGTERM/SIGINT; the message says where and how to resume.

    Attributes:
      message: what happened and how to resume (also `str()`, to which gin may append).
      signal_name: "SIGTERM" or "SIGINT".
      step: the step (training) or number of batches (evaluation, inference) completed.
    """

    exit_status = EXIT_STOPPED

    def __init__(self, message: str, signal_name: str, step: int):
        super().__init__(message)
        self.message = message
        self.signal_name = signal_name
        self.step = step
