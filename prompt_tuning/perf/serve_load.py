"""Load test of `pt-serve`: mixed-task batching vs one batch per prompt (`tools/serve_load.py`).

The tool's docstring describes the test and its output. `run` runs every (model, policy) phase:
`write_prompts` writes M random prompts, `start_server` starts `python -m prompt_tuning.serve`
on a loopback address (`check_loopback`) and waits for `/readyz`, `drive` runs the closed-loop
clients and reads the server's `/metrics`, and `table` formats the figures. The functions take
the tool's flags as `args` (an `argparse.Namespace`: model, prompts, clients, requests, duration,
warmup, prompt_length, input_words, input_bucket, max_length, endpoint, labels, label_count_buckets,
batch_buckets, batch_wait_ms, host, startup_timeout); `request_body` builds what a client sends.
The gin text below configures the server subprocess; this module imports neither gin nor `tasks`.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import ipaddress
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

REPO = pathlib.Path(__file__).resolve().parents[2]  # the repository (gin_configs/)
POLICIES = ("mixed", "per_prompt")
ENDPOINTS = ("generate", "classify")
# Random T5 1.1 small with the tiny vocabulary: nothing to download (its 512 ids fit in 32,128).
SMALL_RANDOM_GIN = """
from __gin__ import dynamic_registration
from tasks import vocabularies
include 'gin_configs/models/t5_1_1_small.gin'
INITIAL_CHECKPOINT_PATH = None
VOCABULARY = @vocabularies.tiny_vocabulary()
"""
MODELS = {  # gin file (None: written from SMALL_RANDOM_GIN), model dim H
    "tiny": ("gin_configs/models/t5_1_1_tiny_pretrained.gin", 128),
    "small": (None, 512),
}
SPM = REPO / "prompt_tuning" / "pretrained" / "t5_tiny" / "sentencepiece.model"


def single_piece_words(count: int = 64) -> list[str]:
    """Words that are one piece of the tiny vocabulary (so N words + EOS = N + 1 tokens)."""
    import sentencepiece  # noqa: PLC0415

    processor = sentencepiece.SentencePieceProcessor(model_file=str(SPM))
    pieces = (processor.id_to_piece(i) for i in range(processor.get_piece_size()))
    words = [p[1:] for p in pieces if p.startswith("\u2581") and p[1:].isalpha() and len(p) > 3]
    return words[:count]


def check_loopback(host: str) -> None:
    """Refuses any host outside the loopback range (this tool only loads local servers)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"error: --host {host} is not a loopback address (127.0.0.0/8, ::1).")


def write_prompts(folder: pathlib.Path, count: int, length: int, width: int) -> list[str]:
    """M random prompts [P, H] as `load_<i>.npy`; returns their names."""
    rng = np.random.default_rng(0)
    names = [f"load_{i:03d}" for i in range(count)]
    for name in names:
        np.save(folder / f"{name}.npy", rng.uniform(-0.5, 0.5, (length, width)).astype(np.float32))
    return names


def start_server(model: str, policy: str, folder: pathlib.Path, args, log) -> tuple[Any, str]:
    """Starts pt-serve for one policy; returns (process, url) once it is ready (/readyz)."""
    gin_file = MODELS[model][0]
    if gin_file is None:
        gin_file = folder.parent / f"{model}.gin"
        gin_file.write_text(SMALL_RANDOM_GIN)
    flags = [
        f"--gin_file={gin_file}",
        "--gin_file=gin_configs/runs/serve.gin",
        f"--gin.HOST='{args.host}'",
        "--gin.PORT=0",
        f"--gin.PROMPT_DIR='{folder}'",
        f"--gin.BATCHING='{policy}'",
        f"--gin.BATCH_BUCKETS={list(args.batch_buckets)}",
        f"--gin.INPUT_LENGTH_BUCKETS=[{args.input_bucket}]",
        f"--gin.DECODE_LENGTH_BUCKETS=[{args.max_length}]",
        # Label words are one piece each: label + EOS = 2 tokens.
        "--gin.LABEL_LENGTH_BUCKETS=[2]",
        f"--gin.LABEL_COUNT_BUCKETS={list(args.label_count_buckets)}",
        "--gin.WARMUP=['greedy']" if args.endpoint == "generate" else "--gin.WARMUP=['score']",
        f"--gin.BATCH_WAIT_MS={args.batch_wait_ms}",
        f"--gin.BANK_CAPACITY={max(args.prompts, 1)}",
        f"--gin.MAX_QUEUE_ROWS={max(1024, 4 * args.clients)}",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "prompt_tuning.serve", *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    deadline = time.time() + args.startup_timeout
    for line in process.stdout:
        match = re.search(r"http://\S+:\d+", line)
        if "Serving" in line and match:
            threading.Thread(target=process.stdout.read, daemon=True).start()
            wait_ready(match.group(0), deadline)
            return process, match.group(0)
        if time.time() > deadline:
            break
    process.kill()
    raise SystemExit(f"error: the {model}/{policy} server did not start; see {log.name}.")


def wait_ready(url: str, deadline: float) -> None:
    """Waits until GET /readyz answers 200 (every program compiled), polling every 50 ms."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    while time.time() < deadline:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.05)
    raise SystemExit(f"error: {url} was not ready within --startup_timeout.")


def request_body(args, prompt: str, text: str, labels: Sequence[str]) -> dict[str, Any]:
    """One request: greedy generation of `max_length` tokens, or classification among `labels`."""
    if args.endpoint == "generate":
        return {"prompt": prompt, "inputs": text, "max_length": args.max_length}
    return {"prompt": prompt, "inputs": text, "labels": list(labels)}


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> int:
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status


def _metrics(url: str) -> dict[str, float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def drive(url: str, names: Sequence[str], args) -> dict[str, Any]:
    """Runs K closed-loop clients; returns throughput, latencies and batch statistics."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    rng = np.random.default_rng(1)
    words = single_piece_words()
    texts = [" ".join(rng.choice(words, args.input_words)) for _ in range(64)]
    labels = words[-args.labels :]
    path = f"/v1/{args.endpoint}"
    latencies, lock = [], threading.Lock()
    stop, counted, errors = threading.Event(), [0], []
    start_line = threading.Barrier(args.clients + 1)

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        prompt = names[k % len(names)]
        for i in range(args.warmup):
            body = request_body(args, prompt, texts[(k + i) % 64], labels)
            _post(connection, path, json.dumps(body).encode())
        start_line.wait()
        i = 0
        while not stop.is_set():
            body = request_body(args, prompt, texts[(k + i) % 64], labels)
            t0 = time.perf_counter()
            status = _post(connection, path, json.dumps(body).encode())
            elapsed = time.perf_counter() - t0
            i += 1
            with lock:
                if status != 200:
                    errors.append(status)
                elif counted[0] < args.requests:
                    latencies.append(elapsed)
                    counted[0] += 1
                if counted[0] >= args.requests:
                    stop.set()
        connection.close()

    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        futures = [pool.submit(client, k) for k in range(args.clients)]
        start_line.wait()
        before, t0 = _metrics(url), time.perf_counter()
        stop.wait(args.duration)
        elapsed = time.perf_counter() - t0
        stop.set()
        for future in futures:
            future.result()
    after = _metrics(url)
    delta = lambda name: after.get(name, 0.0) - before.get(name, 0.0)  # noqa: E731
    batches = max(delta("pt_serve_batch_rows_count"), 1.0)
    ms = 1e3 * np.asarray(latencies)
    return {
        "answers": len(latencies),
        "errors": len(errors),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "rows_per_batch": round(delta("pt_serve_batch_rows_sum") / batches, 2),
        "prompts_per_batch": round(delta("pt_serve_batch_prompts_sum") / batches, 2),
        "xla_compiles": int(delta("pt_serve_xla_compiles_total")),
    }


def run(args) -> list[dict[str, Any]]:
    """Every (model, policy) phase."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.model:
            folder = pathlib.Path(tmp) / model
            folder.mkdir()
            names = write_prompts(folder, args.prompts, args.prompt_length, MODELS[model][1])
            for policy in POLICIES:
                log_path = pathlib.Path(tmp) / f"{model}_{policy}.log"
                with log_path.open("w") as log:
                    print(f"# {model} / {policy}: starting the server", file=sys.stderr)
                    process, url = start_server(model, policy, folder, args, log)
                    try:
                        row = drive(url, names, args)
                    finally:
                        process.send_signal(signal.SIGTERM)
                        process.wait(120)
                results.append({"model": model, "policy": policy, **row})
                print(f"# {json.dumps(results[-1])}", file=sys.stderr)
    return results


def table(results: Sequence[dict[str, Any]], args) -> str:
    """The Markdown table with mixed/per-prompt ratios."""
    if args.endpoint == "generate":
        work = f"{args.max_length} output tokens (greedy)"
    else:
        work = (
            f"classify among {args.labels} one-word labels "
            f"(LABEL_COUNT_BUCKETS {list(args.label_count_buckets)})"
        )
    lines = [
        f"{args.prompts} prompts x {args.prompt_length} tokens, {args.clients} clients, "
        f"{args.input_words}-word inputs, {work}; "
        f"load average {os.getloadavg()[0]:.2f} at the end",
        "",
        "| model | batching | answers/s | p50 ms | p99 ms | rows/batch | prompts/batch | "
        "compiles |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['policy']} | {r['throughput_rps']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['rows_per_batch']} | {r['prompts_per_batch']} | "
            f"{r['xla_compiles']} |"
        )
    lines.append("")
    for model in args.model:
        mixed, single = (next(r for r in results if r["model"] == model and r["policy"] == p)
                         for p in POLICIES)  # fmt: skip
        lines.append(
            f"{model}: mixed / per-prompt throughput {mixed['throughput_rps'] / single['throughput_rps']:.2f}x, "  # noqa: E501
            f"p99 {mixed['p99_ms'] / single['p99_ms']:.2f}x"
        )
    return "\n".join(lines)
