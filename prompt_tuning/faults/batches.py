"""Stopping evaluation and inference runs between batches (`evaluation.iterate_batches`).

    with batches.stop_at_batches("inference"):
        ...  # every batch boundary checks for an agreed stop, raising `faults.Stopped`

Training checks at its own step boundaries (`trainer`); the evaluations it runs are not
interrupted (no scope is active then).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prompt_tuning.faults import Stopped
from prompt_tuning.faults.agreement import StopAgreement
from prompt_tuning.faults.signals import StopSignals

_active: list[tuple[StopAgreement, list[int]]] = []  # the innermost scope and its batch count


@contextlib.contextmanager
def stop_at_batches(
    what: str, resume: str = "Run the same command to start it again."
) -> Iterator[None]:
    """SIGTERM/SIGINT stop the run at the next batch boundary every process agrees on.

    Args:
      what: the run, as messages name it ("inference", "evaluation").
      resume: what the stop message tells the user to do.
    """
    with StopSignals(what) as signals:
        _active.append((StopAgreement(signals), [0]))
        try:
            yield
        except Stopped as stopped:
            raise Stopped(
                f"{stopped.message} {resume}", stopped.signal_name, stopped.step
            ) from None
        finally:
            _active.pop()


def batch_boundary() -> None:
    """Called after each batch is dispatched; raises `Stopped` when every process agrees.

    Raises:
      Stopped: a stop was agreed (the message says how many batches were run).
    """
    if not _active:
        return
    agreement, count = _active[-1]
    count[0] += 1
    if agreement.should_stop():
        signals = agreement.signals
        raise Stopped(
            f"{signals.what.capitalize()} stopped by {signals.signal_name} after {count[0]} "
            "batch(es); nothing was written.",
            signals.signal_name or "",
            count[0],
        )
