"""How fast `pt-serve` is live and ready, from a cold and from a warm compilation cache.

    python tools/serve_ready_time.py              # the embedded tiny T5, serve.gin's buckets
    python tools/serve_ready_time.py --runs 2 --gin.BATCH_BUCKETS=[1,8]

Starts `python -m prompt_tuning.serve` (gin_configs/models/t5_1_1_tiny_pretrained.gin,
gin_configs/runs/serve.gin, one prompt in PROMPT_DIR) as a subprocess with a fresh, empty
COMPILATION_CACHE_DIR, polls GET /healthz and GET /readyz every 20 ms and sends one
`/v1/generate` request (one short input) as soon as the server is live; then stops it (SIGTERM)
and starts it again on the same cache folder ("warm"). For each start it prints, in seconds from
the process start: live (first /healthz 200), first answer (that request answered), ready (first
/readyz 200); plus the warm-up's own duration as /readyz reports it (from the listener coming up),
the CPU seconds the server process had used when live and when ready (user + system: on a busy
shared machine a figure that does not depend on the load), the number of programs and the load
average. Extra `--gin.NAME=VALUE` flags go to the server. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Sequence
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
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


def measure(cache: pathlib.Path, prompts: pathlib.Path, flags: Sequence[str], timeout: float):
    """One start of the server: seconds from the process start to live, first answer, ready."""
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


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="cold + warm pairs")
    parser.add_argument("--timeout", type=float, default=600.0)
    args, flags = parser.parse_known_args(argv)
    bad = [f for f in flags if not f.startswith("--gin.")]
    if bad:
        parser.error(f"unknown arguments {bad}; server flags are --gin.NAME=VALUE")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = pathlib.Path(tmp) / "prompts"
        prompts.mkdir()
        prompt = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 128)).astype(np.float32)
        np.save(prompts / "task.npy", prompt)
        print(
            "| start | live s | first answer s | ready s | warm-up s | CPU s at live | CPU s at "
            "ready | programs | load |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for run in range(args.runs):
            cache = pathlib.Path(tmp) / f"cache_{run}"  # fresh and empty for each pair
            for start in ("cold", "warm"):
                t = measure(cache, prompts, flags, args.timeout)
                rows.append({"start": start, **t})
                print(
                    f"| {start} | {t['live']:.1f} | {t['first_answer']:.1f} | {t['ready']:.1f} "
                    f"| {t['warmup']:.1f} | {t['live_cpu'] or 0:.1f} | {t['cpu'] or 0:.1f} "
                    f"| {t['programs']} "
                    f"| {t['load']:.1f} |",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    main()
