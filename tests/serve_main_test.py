"""`python -m prompt_tuning.serve` with runs/serve.gin: live, then ready (programs in the
persistent compilation cache), serves, and drains on SIGTERM."""

import concurrent.futures
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.serve_fixtures import call

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = [
    "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
    "--gin_file=gin_configs/runs/serve.gin",
    "--gin.PORT=0",
    "--gin.BATCH_BUCKETS=[4]",
    "--gin.INPUT_LENGTH_BUCKETS=[16]",
    "--gin.DECODE_LENGTH_BUCKETS=[8]",
    "--gin.WARMUP=['greedy']",
    # Fewer rows than a full batch (4) wait for company until SIGTERM drains the queue.
    "--gin.BATCH_WAIT_MS=600000",
]


def _until(condition, what, timeout=120.0):
    """Polls `condition()` (an HTTP counter) until it holds; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _start(*flags):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "prompt_tuning.serve", *FLAGS, *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serves_from_gin_and_drains_in_flight_requests_on_sigterm(tmp_path):
    np.save(tmp_path / "builtin_keyword.npy", np.ones((3, 32), np.float32))
    cache = tmp_path / "cache"
    process = _start(f"--gin.PROMPT_DIR='{tmp_path}'", f"--gin.COMPILATION_CACHE_DIR='{cache}'")
    try:
        line = ""
        while "Serving" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        assert "ready once 1 programs are compiled" in line
        assert call(url, "GET", "/healthz")[0] == 200
        _until(lambda: call(url, "GET", "/readyz")[0] == 200, "/readyz 200")
        progress = call(url, "GET", "/readyz")[1]
        assert progress["programs"]["compiled"] == ["greedy B=4 T=16 S=8"]
        assert any(cache.iterdir())  # the program is in the persistent compilation cache
        # classify with no labels: the gin file's label lookup gives the task's two labels, so
        # two inputs fill a batch of 4 rows.
        status, answer, _ = call(url, "POST", "/v1/classify", {"prompt": "builtin_keyword",
                                 "inputs": ["zzz one two", "three"]})  # fmt: skip
        assert status == 200 and answer["labels"] == ["no", "yes"]
        body = {"prompt": "builtin_keyword", "inputs": "alpha beta", "max_length": 4}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(call, url, "POST", "/v1/generate", body) for _ in range(3)]
            # Accepted, waiting in the queue for their batch (3 rows < 4: until drained).
            _until(lambda: call(url, "GET", "/healthz")[1]["queue_rows"] == 3, "3 queued rows")
            assert not any(f.done() for f in futures)
            process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [status for status, _, _ in answers] == [200, 200, 200]
        assert {a["outputs"][0]["batch"]["rows"] for _, a, _ in answers} == {3}
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in process.stderr.read()
    with pytest.raises(OSError):
        call(url, "GET", "/healthz")
