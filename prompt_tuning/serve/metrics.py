"""Prometheus metrics of a prompt server (`GET /metrics`, text exposition format).

- `pt_serve_requests_total{endpoint, status}`: HTTP requests answered.
- `pt_serve_batches_total{kind}`, `pt_serve_batch_rows` (histogram of rows per batch, before
  padding), `pt_serve_batch_prompts` (histogram of distinct prompts per batch: > 1 is a mixed-task
  batch), `pt_serve_batch_padded_rows` (histogram of the batch bucket used).
- `pt_serve_queue_seconds` (time from arrival to the start of its batch) and
  `pt_serve_compute_seconds` (time a batch ran), histograms.
- `pt_serve_compiles_total{reason}`: serving programs compiled ("warmup", "new_shape",
  "bank_resize"); `pt_serve_xla_compiles_total`: every XLA compilation in the process (JAX's
  backend-compile event), so a compilation outside the serving programs shows up too.
- `pt_serve_queue_rows`, `pt_serve_prompts`, `pt_serve_bank_capacity`,
  `pt_serve_bank_prompt_length`: gauges.
"""

from __future__ import annotations

import threading

import jax
import prometheus_client as prom

# JAX records this event once per XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class XlaCompileCounter:
    """Counts XLA compilations of this process from the moment it is created."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self.count += 1

    def close(self) -> None:
        """Stops counting."""
        try:
            jax.monitoring.unregister_event_duration_listener(self._listen)
        except AssertionError:  # already removed
            pass


class ServerMetrics:
    """One server's metrics in its own registry (several servers may share a process in tests)."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "pt_serve_requests", "HTTP requests answered.", ["endpoint", "status"], registry=r
        )
        self.batches = prom.Counter("pt_serve_batches", "Batches run.", ["kind"], registry=r)
        self.batch_rows = prom.Histogram(
            "pt_serve_batch_rows", "Rows per batch (before padding).", buckets=_SIZE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_prompts = prom.Histogram(
            "pt_serve_batch_prompts", "Distinct prompts per batch.", buckets=_SIZE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_padded = prom.Histogram(
            "pt_serve_batch_padded_rows", "Batch bucket used (rows after padding).",
            buckets=_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = prom.Histogram(
            "pt_serve_queue_seconds", "Arrival to start of its batch.", buckets=_TIME_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.compute_seconds = prom.Histogram(
            "pt_serve_compute_seconds", "Time a batch ran.", buckets=_TIME_BUCKETS, registry=r
        )
        self.compiles = prom.Counter(
            "pt_serve_compiles", "Serving programs compiled.", ["reason"], registry=r
        )
        self.xla = XlaCompileCounter()
        xla_compiles = prom.Gauge(
            "pt_serve_xla_compiles_total", "XLA compilations in this process.", registry=r
        )
        xla_compiles.set_function(lambda: self.xla.count)
        self.queue_rows = prom.Gauge("pt_serve_queue_rows", "Rows waiting.", registry=r)
        self.prompts = prom.Gauge("pt_serve_prompts", "Prompts served.", registry=r)
        self.capacity = prom.Gauge("pt_serve_bank_capacity", "Bank rows (C).", registry=r)
        self.prompt_length = prom.Gauge(
            "pt_serve_bank_prompt_length", "Bank prompt length (P).", registry=r
        )

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return prom.generate_latest(self.registry)

    def close(self) -> None:
        """Stops the XLA compile listener."""
        self.xla.close()


CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
