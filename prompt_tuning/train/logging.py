"""Training progress output: a progress line, clu metric writers and MODEL_DIR/metrics.jsonl.

Every logged step and every evaluation goes to three places (on the first host only):
- stdout: `step 120/1000 | loss 2.3141 | 5.12 steps/s | 164 examples/s | ETA 2m52s`;
- TensorBoard event files in MODEL_DIR/tensorboard via clu's metric writers (when the
  `tensorboard` package is installed) (`train/loss`,
  `train/learning_rate`, `train/steps_per_sec`, `eval/<task>/<metric>`, ...);
- MODEL_DIR/metrics.jsonl: one JSON object per line, `{"step": ..., "kind": "train"|"eval", ...}`,
  appended whole or not at all (`model_dir.ModelDir.append_metrics`).
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

from prompt_tuning.model_dir import ModelDir


def _tensorboard_writer(logdir: pathlib.Path, enabled: bool) -> Any:
    """clu's default metric writer (TensorBoard events + absl logs), or None without tensorboard.

    clu's writers import the `tensorboard` package; when it is missing, metrics still go to stdout
    and metrics.jsonl, and a message says how to get TensorBoard files.
    """
    if not enabled:
        return None
    try:
        from clu import metric_writers  # noqa: PLC0415 (needs the optional tensorboard package)
    except ImportError as error:
        print(
            f"TensorBoard logging is off ({error}); `pip install tensorboard` to enable it. "
            "Metrics still go to metrics.jsonl.",
            file=sys.stderr,
        )
        return None
    return metric_writers.create_default_writer(str(logdir), asynchronous=False)


def format_duration(seconds: float) -> str:
    """Formats seconds as `1h02m`, `2m52s` or `7s`."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class MetricsLogger:
    """Writes training and evaluation metrics (see the module docstring).

    Attributes:
      model_dir: MODEL_DIR.
      total_steps: TRAIN_STEPS, for the ETA.
      batch_size: global batch size, for examples/s.
      enabled: whether this host writes anything (the first host only).
    """

    def __init__(
        self,
        model_dir: str | pathlib.Path,
        total_steps: int,
        batch_size: int,
        enabled: bool = True,
        stream: Any = None,
    ):
        self.model_dir = pathlib.Path(model_dir)
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._layout = ModelDir(model_dir)
        self._writer = _tensorboard_writer(self._layout.tensorboard, enabled)
        self._last_time: float | None = None
        self._last_step: int | None = None

    def start(self, step: int) -> None:
        """Starts the throughput clock at `step` (call after compilation, before the loop)."""
        self._last_time, self._last_step = time.perf_counter(), step

    def _write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes scalars to TensorBoard (when available)."""
        if self._writer is not None:
            self._writer.write_scalars(step, scalars)
            self._writer.flush()

    def log_train(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Logs training metrics averaged since the last log, with throughput and ETA.

        Args:
          step: steps completed.
          metrics: scalar metrics (loss, accuracy, learning_rate, ...).

        Returns:
          The logged scalars, including `steps_per_sec`, `examples_per_sec` and `eta_seconds`.
        """
        now = time.perf_counter()
        scalars = {k: float(v) for k, v in metrics.items()}
        if self._last_time is not None and step > self._last_step:
            steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
            scalars["steps_per_sec"] = steps_per_sec
            scalars["examples_per_sec"] = steps_per_sec * self.batch_size
            scalars["eta_seconds"] = (self.total_steps - step) / steps_per_sec
        self._last_time, self._last_step = now, step
        if self.enabled:
            self._print_progress(step, scalars)
            self._write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
            self._layout.append_metrics({"step": step, "kind": "train", **scalars})
        return scalars

    def _print_progress(self, step: int, scalars: Mapping[str, float]) -> None:
        """Prints the one-line progress report."""
        parts = [f"step {step}/{self.total_steps}", f"loss {scalars.get('loss', math.nan):.4f}"]
        if "accuracy" in scalars:
            parts.append(f"token acc {scalars['accuracy']:.3f}")
        if "steps_per_sec" in scalars:
            parts += [
                f"{scalars['steps_per_sec']:.2f} steps/s",
                f"{scalars['examples_per_sec']:.0f} examples/s",
                f"ETA {format_duration(scalars['eta_seconds'])}",
            ]
        print(" | ".join(parts), file=self.stream, flush=True)

    def log_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Logs evaluation metrics (keys like `<task>/<metric>`)."""
        scalars = {k: float(v) for k, v in metrics.items()}
        if self.enabled:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(scalars.items()))
            print(f"eval @ step {step}: {shown}", file=self.stream, flush=True)
            self._write_scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
            self._layout.append_metrics({"step": step, "kind": "eval", **scalars})

    def message(self, text: str) -> None:
        """Prints a line (first host only)."""
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Flushes and closes the writers."""
        if self._writer is not None:
            self._writer.close()
