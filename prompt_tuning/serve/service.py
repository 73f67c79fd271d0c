"""The prompt server's operations, independent of HTTP: validate, tokenize, queue, answer.

`Service` holds the frozen model's compiled programs (`engine.Engine`), the served prompts
(`registry.PromptRegistry`), the batcher and the metrics. The HTTP layer (`app.py`) turns requests
into calls here and `ApiError`s into JSON error responses.

Inputs are text, tokenized with the model's vocabulary (VOCABULARY) and ended with EOS as seqio's
tasks do; a text is what `pt-infer` reports as `inputs` (the task's preprocessed input). An input
longer than the largest input bucket is refused (HTTP 400) unless the request asks for
`truncate`, which keeps its first tokens and the EOS (seqio's `append_eos_after_trim`).

Letters: C labels, S output length, T input length.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from prompt_tuning.predict import rank_classification as ranking
from prompt_tuning.serve import batcher as batcher_lib
from prompt_tuning.serve import engine as engine_lib
from prompt_tuning.serve import loading, registry
from prompt_tuning.serve.metrics import ServerMetrics


class ApiError(Exception):
    """A request the server refuses: an HTTP status, a message naming problem and fix, details."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits (over them: HTTP 400/413).

    Attributes:
      max_inputs: texts per request.
      max_text_chars: characters per text (before tokenizing).
      max_upload_bytes: size of an uploaded prompt.
      default_max_length: output length when a request gives none.
    """

    max_inputs: int = 64
    max_text_chars: int = 20_000
    max_upload_bytes: int = 64 * 2**20
    default_max_length: int = 32


@dataclasses.dataclass
class ServiceConfig:
    """How a `Service` batches and what it compiles (the serve.gin macros of the same names).

    Attributes:
      buckets: padded shapes (BATCH_BUCKETS, INPUT_LENGTH_BUCKETS, ...).
      bank_capacity: initial bank rows (BANK_CAPACITY; grows by doubling, one recompilation).
      bank_prompt_length: initial P (BANK_PROMPT_LENGTH; None: the longest loaded prompt, or 100).
      max_prompt_length: the longest prompt accepted.
      max_capacity: the most rows the bank grows to.
      policy: "mixed" or "per_prompt" (BATCHING).
      max_wait_s: how long the oldest request waits for others to share its batch.
      max_queue_rows: queued rows before HTTP 429.
      beam_sizes: beam widths served.
      warmup: program kinds compiled at start, in the background ("greedy", "beam", "score").
      limits: per-request limits.
      compile_threads: programs compiled at once (None: the CPU count).
    """

    buckets: engine_lib.Buckets = dataclasses.field(default_factory=engine_lib.Buckets)
    bank_capacity: int = 64
    bank_prompt_length: int | None = None
    max_prompt_length: int = 1024
    max_capacity: int = 4096
    policy: str = "mixed"
    max_wait_s: float = 0.002
    max_queue_rows: int = 1024
    beam_sizes: tuple[int, ...] = (4,)
    warmup: tuple[str, ...] = engine_lib.KINDS
    limits: Limits = dataclasses.field(default_factory=Limits)
    compile_threads: int | None = None


class Service:
    """A frozen model serving many prompts (see the module docstring)."""

    def __init__(
        self,
        module: Any,
        params: Any,
        vocabulary: Any,
        config: ServiceConfig,
        initial_prompts: Sequence[loading.Found] = (),
        label_lookup: Callable[[str], Sequence[str] | None] | None = None,
        start_warm_up: bool = True,
    ):
        """Builds the bank from `initial_prompts`, starts compiling the warm-up programs in the
        background (`ready` once done) and starts batching.

        Args:
          module: the frozen `EncoderDecoder` (MODEL; any prompt of its own is ignored).
          params: its parameters, placed by `inference.load_params`.
          vocabulary: a seqio vocabulary (VOCABULARY) for inputs, outputs and labels.
          config: batching and compilation settings.
          initial_prompts: `loading.scan_prompt_dir` entries; skipped ones keep their reason.
          label_lookup: a task name -> its label strings (None for generative tasks); classify
            uses it when a request gives no labels.
          start_warm_up: start compiling now (else at `start_warm_up()`: `pt-serve` starts it
            when its HTTP listener comes up).
        """
        self.config = config
        self.vocabulary = vocabulary
        self.metrics = ServerMetrics()
        self.skipped = {f.name: f.reason for f in initial_prompts if f.reason is not None}
        for name, reason in self.skipped.items():
            logging.warning("Not serving %s: %s", name, reason)
        self._label_lookup = label_lookup
        self.engine = engine_lib.Engine(
            module,
            params,
            config.buckets,
            config.beam_sizes,
            self._compiled,
            config.compile_threads,
        )
        served = [f for f in initial_prompts if f.reason is None]
        self.registry = self._build_registry(served)
        for found in served:
            try:
                self.registry.add(found.name, found.prompt, found.source)
            except registry.PromptError as error:
                self.skipped[found.name] = str(error)
                logging.warning("Not serving %s: %s", found.name, error)
        capacity, length = self.registry.shape
        # In the background, smallest buckets first: requests are served meanwhile (`ready`).
        self.warmup = self.engine.plan_warm_up(config.warmup, capacity, length)
        if start_warm_up:
            self.start_warm_up()
        self.draining = False
        self._update_gauges()
        self.batcher = batcher_lib.Batcher(
            self._run_batch,
            max_rows=config.buckets.batch[-1],
            policy=config.policy,
            max_wait_s=config.max_wait_s,
            max_queue_rows=config.max_queue_rows,
            on_batch=self._batched,
        )

    def _build_registry(self, served: Sequence[loading.Found]) -> registry.PromptRegistry:
        cfg = self.config
        longest = max((f.prompt.shape[0] for f in served if f.prompt.ndim == 2), default=0)
        length = cfg.bank_prompt_length or longest or 100
        capacity = cfg.bank_capacity
        while capacity < len(served):
            capacity *= 2
        sharding = self.engine.replicated()
        return registry.PromptRegistry(
            self.engine.embed_dim,
            capacity,
            min(max(length, longest), cfg.max_prompt_length),
            lambda array: jax.device_put(array, sharding),
            cfg.max_prompt_length,
            cfg.max_capacity,
        )

    # Metrics hooks -------------------------------------------------------------------------------
    def _compiled(self, key: engine_lib.ProgramKey, reason: str, seconds: float) -> None:
        del key, seconds
        self.metrics.compiles.labels(reason).inc()

    def _batched(self, items: list[batcher_lib.Item], info: batcher_lib.BatchInfo) -> None:
        m = self.metrics
        m.batches.labels(items[0].kind).inc()
        m.batch_rows.observe(info.rows)
        m.batch_prompts.observe(info.prompts)
        m.batch_padded.observe(engine_lib.bucket(self.config.buckets.batch, info.rows))
        m.compute_seconds.observe(info.compute_s)
        m.queue_rows.set(self.batcher.queued_rows)

    def _update_gauges(self) -> None:
        capacity, length = self.registry.shape
        self.metrics.prompts.set(len(self.registry.names()))
        self.metrics.capacity.set(capacity)
        self.metrics.prompt_length.set(length)

    # Worker side ---------------------------------------------------------------------------------
    def _run_batch(self, items: list[batcher_lib.Item]) -> list[Any]:
        """Runs one batch (worker thread); a removed prompt fails its items only."""
        bank = self.registry.snapshot()
        results: list[Any] = [None] * len(items)
        live = []
        for i, item in enumerate(items):
            if item.prompt in bank.slots:
                live.append(i)
            else:
                results[i] = batcher_lib.UnknownPrompt(item.prompt)
            self.metrics.queue_seconds.observe(max(0.0, time.perf_counter() - item.enqueued))
        if not live:
            return results
        chosen = [items[i] for i in live]
        slots = [bank.slots[item.prompt] for item in chosen]
        if chosen[0].kind == "score":  # each input encoded once for all its labels
            tokens = [item.tokens for item in chosen]
            scores = self.engine.score(bank, tokens, slots, [item.targets for item in chosen])
            for i, row in zip(live, scores):
                results[i] = row
            return results
        outputs, scores = self.engine.generate(
            bank,
            [item.tokens for item in chosen],
            slots,
            [item.max_length for item in chosen],
            chosen[0].kind,
            chosen[0].beam_size,
        )
        for j, i in enumerate(live):
            results[i] = (outputs[j], None if scores is None else scores[j])
        return results

    # Request side --------------------------------------------------------------------------------
    def prompt_or_404(self, name: str) -> registry.PromptInfo:
        """The served prompt `name`.

        Raises:
          ApiError: 404 naming the served prompts (and why `name` is not served, if known).
        """
        info = self.registry.get(name)
        if info is not None:
            return info
        known = self.registry.names()
        reason = self.skipped.get(name)
        message = f"Unknown prompt {name!r}; served prompts: {known}."
        if reason:
            message = f"Prompt {name!r} is not served: {reason.rstrip('.')}. Served: {known}."
        raise ApiError(404, message, known=known)

    def tokenize(self, texts: str | Sequence[str], truncate: bool) -> list[np.ndarray]:
        """Token arrays (EOS appended) of the request's inputs.

        Raises:
          ApiError: 400 for too many or too long inputs (naming the limit and `truncate`).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        limits, longest = self.config.limits, self.config.buckets.input_length[-1]
        if not 1 <= len(texts) <= limits.max_inputs:
            raise ApiError(
                400, f"Give 1 to {limits.max_inputs} inputs per request; got {len(texts)}."
            )
        out = []
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise ApiError(
                    400,
                    f"Input {i} has {len(text)} characters; the limit is "
                    f"{limits.max_text_chars} per input.",
                )
            ids = ranking.tokenize(self.vocabulary, text)
            if len(ids) > longest:
                if not truncate:
                    raise ApiError(
                        400,
                        f"Input {i} has {len(ids)} tokens with EOS; the server takes at most "
                        f"{longest} (the largest of INPUT_LENGTH_BUCKETS). Shorten it, or pass "
                        '"truncate": true to keep its first tokens.',
                    )
                ids = ranking.tokenize(self.vocabulary, text, max_length=longest)
            out.append(ids)
        return out

    def labels_for(self, name: str, labels: Sequence[str] | None) -> list[str]:
        """The label strings to rank: the request's, else the task's.

        Raises:
          ApiError: 400 when there are none, duplicates, empty ones or too many.
        """
        if labels is None and self._label_lookup is not None:
            try:
                labels = self._label_lookup(name)
            except KeyError:
                labels = None
        if not labels:
            raise ApiError(
                400,
                f'No labels to rank for prompt {name!r}: pass "labels": [...] or name the prompt '
                "after a registered classification task.",
            )
        labels = list(labels)
        most = self.config.buckets.batch[-1]
        if len(set(labels)) != len(labels) or not all(labels) or len(labels) > most:
            raise ApiError(
                400,
                f"Labels must be 1 to {most} distinct non-empty strings (the largest batch "
                f"bucket); got {labels!r}.",
            )
        return labels

    def label_tokens(self, labels: Sequence[str]) -> list[np.ndarray]:
        """Label targets (EOS appended, as a task's targets feature).

        Raises:
          ApiError: 400 for a label longer than the largest label bucket.
        """
        longest = self.config.buckets.label_length[-1]
        out = []
        for label in labels:
            ids = ranking.tokenize(self.vocabulary, label)
            if len(ids) > longest:
                raise ApiError(
                    400,
                    f"Label {label!r} takes {len(ids)} tokens with EOS; the server scores at most "
                    f"{longest} (the largest of LABEL_LENGTH_BUCKETS).",
                )
            out.append(ids)
        return out

    async def run(self, items: list[batcher_lib.Item]) -> list[tuple[Any, Any]]:
        """Queues items and awaits their results `(result, BatchInfo, queue seconds)`.

        Raises:
          ApiError: 429 when the queue is full, 503 while draining, 404 when the prompt was
            removed before its batch ran, 400 when the request alone exceeds the queue.
        """
        rows = sum(item.rows for item in items)
        if rows > self.config.max_queue_rows:
            raise ApiError(
                400,
                f"This request needs {rows} batch rows (inputs x labels); the queue holds at most "
                f"{self.config.max_queue_rows} (MAX_QUEUE_ROWS). Split it into smaller requests.",
            )
        try:
            self.batcher.submit(items)
        except batcher_lib.QueueFull as error:
            raise ApiError(429, str(error)) from None
        except batcher_lib.Stopped as error:
            raise ApiError(503, str(error)) from None
        self.metrics.queue_rows.set(self.batcher.queued_rows)
        try:
            return await asyncio.gather(*(asyncio.wrap_future(i.future) for i in items))
        except batcher_lib.UnknownPrompt as error:
            raise ApiError(404, f"Prompt {error.args[0]!r} was removed.") from None

    def decode(self, tokens: np.ndarray) -> str:
        """Text of output tokens (up to EOS)."""
        return self.vocabulary.decode([int(t) for t in tokens])

    # Prompts -------------------------------------------------------------------------------------
    def put_prompt(self, name: str, prompt: Any, source: str) -> registry.AddResult:
        """Adds or replaces a prompt; a resized bank compiles its programs here (blocking).

        Raises:
          ApiError: 400 for a bad name or prompt (both shapes named).
        """
        try:
            loading.check_name(name)
            before = self.registry.shape
            result = self.registry.add(name, prompt, source)
        except registry.PromptError as error:
            raise ApiError(400, str(error), expected=self.registry.expected_shape()) from None
        self.skipped.pop(name, None)
        if result.resized:
            logging.warning(
                "Prompt %r resized the bank from (C, P) = %s to %s: compiling its programs once.",
                name,
                before,
                result.shape,
            )
            self.engine.warm_up(self.config.warmup, *result.shape, reason="bank_resize")
        self._update_gauges()
        return result

    def remove_prompt(self, name: str) -> registry.PromptInfo:
        """Removes a prompt.

        Raises:
          ApiError: 404 when it is not served.
        """
        try:
            info = self.registry.remove(name)
        except KeyError:
            self.prompt_or_404(name)  # raises the 404
            raise
        self._update_gauges()
        return info

    def start_warm_up(self) -> None:
        """Starts compiling the start-up programs in the background (once)."""
        if not self.warmup.started:
            capacity, length = self.registry.shape
            logging.info(
                "Compiling %d programs for a bank of %d x %d in the background",
                len(self.warmup.keys),
                capacity,
                length,
            )
        self.warmup.start()

    @property
    def ready(self) -> bool:
        """Every program of the start-up warm-up set is compiled."""
        return self.warmup.ready

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Blocks until the start-up programs are compiled (or `timeout` s); returns `ready`."""
        return self.warmup.wait(timeout)

    def readiness(self) -> dict[str, Any]:
        """The warm-up's progress (`warmup.WarmUp.progress`) and whether the server is draining."""
        return {**self.warmup.progress(), "draining": self.draining}

    def health(self) -> dict[str, Any]:
        """Status, readiness, sizes and compile counts."""
        capacity, length = self.registry.shape
        return {
            "status": "draining" if self.draining else "ok",
            "ready": self.ready,
            "prompts": len(self.registry.names()),
            "bank": {"capacity": capacity, "prompt_length": length},
            "queue_rows": self.batcher.queued_rows,
            "policy": self.config.policy,
            "programs": self.engine.num_programs(),
            "compiles": dict(self.engine.compiles),
            "xla_compiles": self.metrics.xla.count,
        }

    def begin_drain(self) -> None:
        """Starts draining without waiting: queued requests run at once, new ones get 503."""
        self.draining = True
        self.warmup.cancel()
        self.batcher.stop(timeout=0)

    def close(self, timeout: float | None = None) -> bool:
        """Drains the queue (queued requests still get answers) and stops the worker."""
        self.begin_drain()
        done = self.batcher.stop(timeout)
        self.metrics.close()
        return done
