"""Preemption and a lost process in a real two-process CPU run (gloo), launched as users do.

- SIGTERM reaches process 1 only: both processes agree on the stop step, save it together and
  exit with status 75; rerunning both ends on exactly an uninterrupted run's prompt.
- Process 1 is killed (SIGKILL) after a checkpoint: process 0 names it and exits with status 69
  (the watchdog, not JAX's heartbeat abort, which would be status 134 after >= 100 s); rerunning
  both resumes from the checkpoint and ends on the same prompt.

The signal and the kill are sent when process 0 prints a step's progress line.
"""

import pathlib
import signal
import socket
import time

import numpy as np
import pytest

from prompt_tuning.faults import EXIT_LOST_PROCESS, EXIT_STOPPED
from tests.faults_fixtures import Process, smoke_train_args, subprocess_env

STEPS = 6
LOST_PROCESS_TIMEOUT = 5


def _train_args(model_dir):
    return [
        "prompt_tuning.train",
        *smoke_train_args(
            model_dir,
            STEPS,
            "--gin.trainer.train.stop_check_period=1",  # CPUs default to 10 (faults.agreement)
            f"--lost_process_timeout={LOST_PROCESS_TIMEOUT}",
        ),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One device per process, one compilation cache for the module."""
    return subprocess_env(tmp_path_factory.mktemp("jax_cache"))


def _launch(model_dir, env):
    """Both processes of a run, started with T5X's flags."""
    port = _free_port()
    return [
        Process(
            [*_train_args(model_dir), f"--coordinator_address=127.0.0.1:{port}"]
            + ["--process_count=2", f"--process_index={i}"],
            env,
        )
        for i in range(2)
    ]


def _finish(processes):
    return [p.finish() for p in processes]


def _resume_and_check(model_dir, env, stop, uninterrupted):
    results = _finish(_launch(model_dir, env))
    for status, output in results:
        assert status == 0, output[-3000:]
    assert f"Resuming from step {stop} of {STEPS}." in results[0][1]
    final = np.load(pathlib.Path(model_dir) / "prompts" / f"step_{STEPS}.npy")
    np.testing.assert_array_equal(final, uninterrupted)  # float32: 0 difference


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    for status, output in _finish(_launch(model_dir, env)):
        assert status == 0, output[-3000:]
    return np.load(model_dir / "prompts" / f"step_{STEPS}.npy")


def test_sigterm_to_one_process_stops_both_at_one_step_and_they_resume(
    tmp_path, env, uninterrupted
):
    processes = _launch(tmp_path, env)
    processes[0].wait_for("step 3/")  # only process 0 prints progress
    processes[1].popen.send_signal(signal.SIGTERM)
    results = _finish(processes)
    stops = set()
    for status, output in results:
        assert status == EXIT_STOPPED, output[-3000:]
        stops.add(int(output.split(" at step ")[1].split(" ")[0]))
    assert "Stopped by SIGTERM" in results[1][1]
    assert "Stopped by a signal in another process" in results[0][1]
    (stop,) = stops  # one step for both
    assert 3 <= stop < STEPS
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept[-1] == stop and (tmp_path / "prompts" / f"step_{stop}.npy").exists()
    _resume_and_check(tmp_path, env, stop, uninterrupted)


def test_killed_process_is_named_and_the_survivor_stops_then_all_resume(
    tmp_path, env, uninterrupted
):
    processes = _launch(tmp_path, env)
    processes[0].wait_for("step 3/")  # checkpoint 2 is saved
    processes[1].popen.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status, output = processes[0].finish()
    print(f"survivor stopped {time.monotonic() - killed:.1f} s after the kill")
    processes[1].finish()
    assert status == EXIT_LOST_PROCESS, output[-3000:]
    assert "Lost process 1 of 2: no heartbeat for " in output
    assert "Restart all 2 processes with the same command" in output
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and kept[-1] >= 2
    _resume_and_check(tmp_path, env, kept[-1], uninterrupted)
