"""How fast `pt-serve` is live and ready, from a cold and a warm compilation cache.

The logic of `tools/serve_ready_time.py` (its docstring describes the measurement): `measure`
starts `python -m prompt_tuning.serve` once and times it, `cold_and_warm` runs the pairs of
starts. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]  # the repository (gin_configs/)
GIN_FILES = ("gin_configs/models/t5_1_1_tiny_pretrained.gin", "gin_configs/runs/serve.gin")


def _get(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc; None elsewhere)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    cache: pathlib.Path, prompts: pathlib.Path, flags: Sequence[str], timeout: float
) -> dict[str, Any]:
    """One start of the server: seconds from the process start to live, first answer, ready.

    Args:
      cache: the COMPILATION_CACHE_DIR (empty: a cold start; used before: a warm one).
      prompts: the PROMPT_DIR, holding `task.npy`.
      flags: extra `--gin.NAME=VALUE` flags of the server.
      timeout: seconds to wait for /readyz.

    Returns:
      `live`, `first_answer`, `ready` (seconds from the process start), `first_status`,
      `live_cpu` and `cpu` (the server's CPU seconds when live and ready; None off Linux),
      `warmup` (seconds, as /readyz reports it), `programs` and `load` (1-minute load average).

    Raises:
      SystemExit: the server exited before serving, or was not ready within `timeout`.
    """
    command = [sys.executable, "-m", "prompt_tuning.serve"]
    command += [f"--gin_file={f}" for f in GIN_FILES]
    command += ["--gin.PORT=0", f"--gin.PROMPT_DIR='{prompts}'"]
    command += [f"--gin.COMPILATION_CACHE_DIR='{cache}'", *flags]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    times: dict[str, Any] = {}
    try:
        port = None
        for line in process.stdout:
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if "Serving" in line and match:
                port = int(match.group(1))
                break
        if port is None:
            raise SystemExit(f"error: the server exited ({process.wait()}) before serving.")
        threading.Thread(target=process.stdout.read, daemon=True).start()
        body = json.dumps({"prompt": "task", "inputs": "a short input", "max_length": 8}).encode()

        def first_answer() -> None:
            status, _ = _get(port, "POST", "/v1/generate", body)
            times["first_answer"] = time.perf_counter() - start
            times["first_status"] = status

        asker = None
        while time.perf_counter() - start < timeout:
            try:
                status, progress = _get(port, "GET", "/readyz")
            except OSError:  # listening socket bound, app not answering yet
                time.sleep(0.02)
                continue
            if "live" not in times:
                times["live"] = time.perf_counter() - start
                times["live_cpu"] = cpu_seconds(process.pid)
            if asker is None:
                asker = threading.Thread(target=first_answer, daemon=True)
                asker.start()
            if status == 200:
                times["ready"] = time.perf_counter() - start
                times["cpu"] = cpu_seconds(process.pid)
                times["warmup"] = progress["seconds"]
                times["programs"] = progress["total"]
                break
            time.sleep(0.02)
        else:
            raise SystemExit(f"error: not ready within {timeout} s.")
        asker.join(timeout)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    times["load"] = os.getloadavg()[0]
    return times


def cold_and_warm(runs: int, flags: Sequence[str], timeout: float) -> Iterator[dict[str, Any]]:
    """`runs` pairs of starts, each pair on a fresh, empty cache: "cold" then "warm".

    The server serves one random prompt [20, 128] named "task" (the tiny T5's width).

    Yields:
      `{"start": "cold" | "warm", **measure(...)}`, one per start, as each ends.
    """
    with tempfile.TemporaryDirectory() as tmp:
        prompts = pathlib.Path(tmp) / "prompts"
        prompts.mkdir()
        prompt = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 128)).astype(np.float32)
        np.save(prompts / "task.npy", prompt)
        for run in range(runs):
            cache = pathlib.Path(tmp) / f"cache_{run}"  # fresh and empty for each pair
            for start in ("cold", "warm"):
                yield {"start": start, **measure(cache, prompts, flags, timeout)}
