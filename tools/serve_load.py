"""Load test of `pt-serve`: mixed-task batching vs one batch per prompt, in the same run.

    python tools/serve_load.py --model tiny small --prompts 16 --clients 16 --requests 480

For each model it writes M random prompts [P, H], then, for each batching policy ("mixed": requests
for different prompts share a batch; "per_prompt": a batch holds one prompt's requests), starts
`python -m prompt_tuning.serve` on 127.0.0.1 (gin_configs/runs/serve.gin; greedy programs compiled
at start; batch buckets 1..32) and drives it with K closed-loop clients: client k sends
`/v1/generate` requests for prompt k mod M, one at a time, a new one when the last is answered
(light traffic per prompt: at most K/M requests in flight for any prompt). The server's
BATCH_WAIT_MS is 20 by default for both policies: closed-loop clients answered together resend
together, and a wait of 2 ms splits them into two half-size cohorts that then alternate (measured on
the small model: 8.3 rows per batch and 3.0x instead of 16 rows and 3.8x). Each phase stops after
`--requests` answers or `--duration` seconds, whichever comes first; the first `--warmup` answers
per client are not timed. Reported per phase: throughput (answers/s), latency p50/p99 (ms), mean
rows and prompts per batch (from the server's /metrics) and the XLA compilations during the timed
part (0 expected). Then the throughput ratio and the p99 ratio of mixed over per-prompt.

Models: "tiny" is the embedded pretrained tiny T5 (gin_configs/models/t5_1_1_tiny_pretrained.gin);
"small" is a randomly initialised T5 1.1 small (77M parameters; t5_1_1_small.gin with
INITIAL_CHECKPOINT_PATH=None and the tiny vocabulary, so nothing is downloaded). Traffic goes to
loopback only. Quote figures with the load average printed beside them.

Output: a Markdown table on stdout and, with `--json`, the figures as JSON.
"""

from __future__ import annotations

import argparse
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

REPO = pathlib.Path(__file__).resolve().parents[1]
POLICIES = ("mixed", "per_prompt")
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
        "--gin.WARMUP=['greedy']",
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


def _post(connection: http.client.HTTPConnection, body: bytes) -> int:
    connection.request("POST", "/v1/generate", body, {"Content-Type": "application/json"})
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
    latencies, lock = [], threading.Lock()
    stop, counted, errors = threading.Event(), [0], []
    start_line = threading.Barrier(args.clients + 1)

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        prompt = names[k % len(names)]
        for i in range(args.warmup):
            body = {"prompt": prompt, "inputs": texts[(k + i) % 64], "max_length": args.max_length}
            _post(connection, json.dumps(body).encode())
        start_line.wait()
        i = 0
        while not stop.is_set():
            body = {"prompt": prompt, "inputs": texts[(k + i) % 64], "max_length": args.max_length}
            t0 = time.perf_counter()
            status = _post(connection, json.dumps(body).encode())
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
    lines = [
        f"{args.prompts} prompts x {args.prompt_length} tokens, {args.clients} clients, "
        f"{args.input_words}-word inputs, {args.max_length} output tokens (greedy); "
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


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", choices=sorted(MODELS), default=["tiny"])
    parser.add_argument("--prompts", type=int, default=16, help="M prompts")
    parser.add_argument("--clients", type=int, default=16, help="K concurrent clients")
    parser.add_argument("--requests", type=int, default=480, help="timed answers per phase")
    parser.add_argument("--duration", type=float, default=60.0, help="max seconds per phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per client")
    parser.add_argument("--prompt_length", type=int, default=20)
    parser.add_argument("--input_words", type=int, default=12)
    parser.add_argument("--input_bucket", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=8)
    parser.add_argument("--batch_buckets", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--batch_wait_ms", type=float, default=20.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--startup_timeout", type=float, default=600.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    check_loopback(args.host)
    if min(args.prompts, args.clients, args.requests) < 1 or args.duration <= 0:
        parser.error("--prompts, --clients, --requests and --duration must be positive.")
    if args.input_words + 1 > args.input_bucket:
        parser.error("--input_words + 1 (EOS) must fit in --input_bucket.")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the load test and prints the table."""
    args = parse(argv)
    results = run(args)
    print(table(results, args))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
