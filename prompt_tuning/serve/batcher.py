"""Dynamic batching of requests for many prompts over one frozen model.

Requests are queued as work items (one input of a `generate`, or one input with all its labels of
a `classify`). One worker thread forms batches: it takes the oldest item, waits at most
`max_wait_s` for more of the same kind (greedy, beam of width W, score) until the largest batch
bucket is full, and runs them as one batch.

- policy "mixed": items for *different prompts* share a batch (each row picks its prompt from the
  bank): a mixed-task batch, as in Lester et al. (2021, section 6).
- policy "per_prompt": a batch holds one prompt's items only (the usual serving of one adapter
  at a time; kept to measure what mixing buys).

Back-pressure: the queue holds at most `max_queue_rows` rows; `submit` refuses more with
`QueueFull` (HTTP 429). `stop` drains: queued items still run, new ones are refused.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

POLICIES = ("mixed", "per_prompt")


class QueueFull(RuntimeError):
    """The queue is at its bound; retry later."""


class Stopped(RuntimeError):
    """The server is shutting down and takes no new work."""


class UnknownPrompt(KeyError):
    """The prompt was removed after the request was accepted."""


@dataclasses.dataclass
class Item:
    """One unit of work.

    Attributes:
      kind: "greedy", "beam" or "score".
      prompt: the prompt's name.
      tokens: input tokens `[t]` (EOS included).
      rows: batch rows it takes (1, or the number of labels for "score").
      max_length: the longest output (generate).
      beam_size: W for "beam" (0 otherwise).
      targets: label tokens, one `[s]` array per label ("score").
      future: set to the result (or an exception) by the worker.
      enqueued: `time.perf_counter()` at submission.
    """

    kind: str
    prompt: str
    tokens: np.ndarray
    rows: int = 1
    max_length: int = 0
    beam_size: int = 0
    targets: Sequence[np.ndarray] = ()
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    enqueued: float = dataclasses.field(default_factory=time.perf_counter)

    def group(self, policy: str) -> tuple:
        """Items with equal groups may share a batch."""
        key = (self.kind, self.beam_size)
        return key + (self.prompt,) if policy == "per_prompt" else key


@dataclasses.dataclass(frozen=True)
class BatchInfo:
    """What a request learns about the batch that served it.

    Attributes:
      rows: rows of the batch (before padding).
      prompts: distinct prompts in it.
      queue_s: seconds the item waited.
      compute_s: seconds the batch ran.
    """

    rows: int
    prompts: int
    queue_s: float
    compute_s: float


class Batcher:
    """Queues items and runs them in batches on one worker thread.

    `run_batch(items, snapshot) -> list of results` is called with the items of one group and
    must return one result per item (or raise; then every item of the batch gets the error).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Any]],
        max_rows: int,
        policy: str = "mixed",
        max_wait_s: float = 0.002,
        max_queue_rows: int = 1024,
        on_batch: Callable[[list[Item], BatchInfo], None] | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"Unknown batching policy {policy!r}; choose one of {POLICIES}.")
        self.policy = policy
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.max_queue_rows = max_queue_rows
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._pending: list[Item] = []
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="pt-serve-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        """Rows waiting."""
        return self._queued_rows

    def submit(self, items: Sequence[Item]) -> None:
        """Queues items (all or none).

        Raises:
          QueueFull: they would exceed `max_queue_rows`.
          Stopped: the batcher is draining.
        """
        rows = sum(item.rows for item in items)
        with self._cond:
            if self._stopping:
                raise Stopped("The server is shutting down; it takes no new requests.")
            if self._queued_rows + rows > self.max_queue_rows:
                raise QueueFull(
                    f"The server is busy: {self._queued_rows} rows are queued and this request "
                    f"adds {rows} (the bound is {self.max_queue_rows}, MAX_QUEUE_ROWS); retry "
                    "later."
                )
            self._pending.extend(items)
            self._queued_rows += rows
            self._cond.notify_all()

    def _take(self) -> list[Item] | None:
        """Waits for a batch: the oldest item's group, up to `max_rows` rows (None: stopped)."""
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            head = self._pending[0]
            group = head.group(self.policy)
            deadline = head.enqueued + self.max_wait_s
            while True:
                same = [item for item in self._pending if item.group(self.policy) == group]
                remaining = deadline - time.perf_counter()
                if sum(i.rows for i in same) >= self.max_rows or remaining <= 0:
                    break
                if self._stopping:
                    break
                self._cond.wait(remaining)
            batch, rows = [], 0
            for item in same:
                if rows + item.rows > self.max_rows:
                    break
                batch.append(item)
                rows += item.rows
            taken = set(map(id, batch))
            self._pending = [item for item in self._pending if id(item) not in taken]
            self._queued_rows -= rows
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            start = time.perf_counter()
            try:
                results = self._run_batch(batch)
            except Exception as error:  # noqa: BLE001 (a failed batch fails its items only)
                logging.exception("A batch of %d items failed", len(batch))
                results = [error] * len(batch)
            compute = time.perf_counter() - start
            info = BatchInfo(
                rows=sum(item.rows for item in batch),
                prompts=len({item.prompt for item in batch}),
                queue_s=start - min(item.enqueued for item in batch),
                compute_s=compute,
            )
            for item, result in zip(batch, results):
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result((result, info, start - item.enqueued))
            if self._on_batch is not None:
                self._on_batch(batch, info)

    def stop(self, timeout: float | None = None) -> bool:
        """Refuses new items, runs the queued ones, and ends the worker.

        Returns:
          Whether the worker finished within `timeout`.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()
