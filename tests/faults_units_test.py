"""The pieces of `prompt_tuning.faults` in this process: signals, the agreement, the watchdog.

The end-to-end behaviour (real subprocesses, real signals, a killed process) is in
faults_preemption_test.py and faults_multiprocess_test.py; here a signal is sent to this process
and the watchdog runs against an in-memory key-value store standing in for JAX's coordinator.
"""

import os
import signal
import threading

import gin
import pytest

from prompt_tuning.faults import EXIT_LOST_PROCESS, EXIT_STOPPED, Stopped, agreement
from prompt_tuning.faults.agreement import StopAgreement
from prompt_tuning.faults.signals import StopSignals
from prompt_tuning.faults.watchdog import PeerWatchdog
from prompt_tuning.train import gin_utils


def test_first_signal_requests_a_stop_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals("training") as signals:
        stop = StopAgreement(signals)
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received.wait(10)
        assert signals.signal_name == "SIGTERM"
        assert stop.should_stop()  # one process: the step it is on
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_check_period_defaults_to_10_on_cpus():
    assert agreement.default_period() == agreement.CPU_PERIOD == 10


def test_stop_check_period_must_be_positive():
    with pytest.raises(ValueError, match="stop check period must be a positive integer"):
        StopAgreement(StopSignals(), period=0)


def test_lost_process_timeout_flag():
    flags, rest = gin_utils.split_process_flags(["--lost_process_timeout=7.5", "--gin.X=1"])
    assert flags == {"lost_process_timeout": 7.5} and rest == ["--gin.X=1"]
    with pytest.raises(ValueError, match="--lost_process_timeout must be a number of seconds"):
        gin_utils.split_process_flags(["--lost_process_timeout=soon"])


class FakeClient:
    """JAX's key-value store in memory; `reads` is set after `n` directory reads."""

    def __init__(self, n):
        self.store, self.count, self.n, self.reads = {}, 0, n, threading.Event()

    def key_value_set(self, key, value, allow_overwrite=False):
        self.store[key] = value

    def key_value_dir_get(self, prefix):
        self.count += 1
        if self.count >= self.n:
            self.reads.set()
        return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


def _watch(client, timeout=0.3):
    exited = []
    done = threading.Event()
    watchdog = PeerWatchdog(
        client, 0, 3, timeout=timeout, exit_fn=lambda s: (exited.append(s), done.set())
    )
    return watchdog, exited, done


def test_a_silent_process_is_named_and_this_one_exits_69(capfd):
    client = FakeClient(n=10**9)
    client.store["prompt_tuning/heartbeat/2"] = "done"  # exited through Python: not lost
    watchdog, exited, done = _watch(client)
    try:
        assert done.wait(30)  # process 1 never wrote a heartbeat
    finally:
        watchdog.stop()
    assert exited == [EXIT_LOST_PROCESS]
    err = capfd.readouterr().err
    assert "Lost process 1 of 3: no heartbeat for" in err
    assert "Restart all 3 processes with the same command" in err


def test_processes_that_beat_or_are_done_are_not_lost():
    client = FakeClient(n=30)  # 30 checks of 0.1 s: well past the 0.3 s timeout
    client.store["prompt_tuning/heartbeat/2"] = "done"
    beating = threading.Event()

    def beat():  # process 1 keeps beating until the watchdog has checked 30 times
        n = 0
        while not client.reads.is_set():
            n += 1
            client.store["prompt_tuning/heartbeat/1"] = str(n)
            beating.set()
            client.reads.wait(0.05)

    thread = threading.Thread(target=beat)
    thread.start()
    beating.wait(10)
    watchdog, exited, _ = _watch(client)
    try:
        assert client.reads.wait(60)
    finally:
        watchdog.stop()
        thread.join()
    assert exited == []


def test_entry_points_print_a_stop_and_exit_75(tmp_path, capsys):
    def stopped_run():
        raise Stopped("Stopped by SIGTERM at step 5 of 8: resume.", "SIGTERM", 5)

    (tmp_path / "empty.gin").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        gin_utils.main(gin.external_configurable(stopped_run), [f"--gin_file={tmp_path}/empty.gin"])
    assert exit_info.value.code == EXIT_STOPPED == 75
    err = capsys.readouterr().err
    assert "Stopped by SIGTERM at step 5 of 8: resume. (exit status 75)" in err
    assert "In call to configurable" not in err  # gin's call context is left out
