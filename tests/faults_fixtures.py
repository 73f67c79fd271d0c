"""Subprocesses for the preemption tests: output read by a thread, waited on with events."""

import os
import pathlib
import subprocess
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]


def subprocess_env(cache_dir, devices=1):
    """The environment of a launched process: `devices` CPU devices, a persistent compilation
    cache in `cache_dir` (restarts and later tests reuse the programs)."""
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def smoke_train_args(model_dir, steps, *extra):
    """`pt-train` flags of the faults tests: the smoke run, a checkpoint every 2 steps, a log line
    every step, dropout on (so a replayed step would differ), no evaluation."""
    return [
        "--gin_file=gin_configs/runs/smoke.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.EVAL_PERIOD=0",
        "--gin.BATCH_SIZE=8",
        "--gin.PROMPT_LENGTH=5",
        "--gin.DROPOUT_RATE=0.1",
        "--gin.SAVE_PERIOD=2",
        "--gin.trainer.train.log_period=1",
        *extra,
    ]


class Process:
    """A subprocess whose merged output is read by a thread; `wait_for` waits on an event."""

    def __init__(self, args, env):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append(None)  # end of output
            self._changed.notify_all()

    def wait_for(self, text, timeout=240):
        """Blocks until a line starts with `text`; fails if the process ends first."""

        def seen():
            return any(line and line.startswith(text) for line in self.lines)

        with self._changed:
            ended = lambda: bool(self.lines) and self.lines[-1] is None  # noqa: E731
            self._changed.wait_for(lambda: seen() or ended(), timeout)
            assert seen(), f"no line {text!r}:\n{self.output()[-3000:]}"

    def finish(self, timeout=240):
        self.popen.wait(timeout)
        self._reader.join(timeout)
        return self.popen.returncode, self.output()

    def output(self):
        return "".join(line for line in self.lines if line)


def run(args, env):
    """Runs `python -m args` to the end: (exit status, output)."""
    return Process(args, env).finish()
