"""`python -m prompt_tuning.serve` with runs/serve.gin: serves, and drains on SIGTERM."""

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
    "--gin.BATCH_WAIT_MS=1500",  # requests wait for company long enough to be in flight at SIGTERM
]


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
    process = _start(f"--gin.PROMPT_DIR='{tmp_path}'")
    try:
        line = ""
        while "Serving" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        # classify with no labels: the gin file's label lookup gives the task's labels.
        status, answer, _ = call(url, "POST", "/v1/classify", {"prompt": "builtin_keyword",
                                 "inputs": "zzz one two"})  # fmt: skip
        assert status == 200 and len(answer["labels"]) >= 2
        body = {"prompt": "builtin_keyword", "inputs": "alpha beta", "max_length": 4}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(call, url, "POST", "/v1/generate", body) for _ in range(3)]
            time.sleep(0.7)  # accepted, waiting in the queue for their batch
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
