"""Load test of `pt-serve`: mixed-task batching vs one batch per prompt, in the same run.

    python tools/serve_load.py --model tiny small --prompts 16 --clients 16 --requests 480
    python tools/serve_load.py --model small --endpoint classify --labels 2

For each model it writes M random prompts [P, H], then, for each batching policy ("mixed": requests
for different prompts share a batch; "per_prompt": a batch holds one prompt's requests), starts
`python -m prompt_tuning.serve` on 127.0.0.1 (gin_configs/runs/serve.gin; the endpoint's greedy or
score programs compiled at start; batch buckets 1..32) and drives it with K closed-loop clients:
client k sends `/v1/generate` requests for prompt k mod M (with `--endpoint classify`:
`/v1/classify` requests among `--labels` one-word labels, scored in programs of
`--label_count_buckets` label rows per input, gin's LABEL_COUNT_BUCKETS), one at a time, a new one
when the last is answered (light traffic per prompt: at most K/M requests in flight for any prompt).
The server's BATCH_WAIT_MS is 20 by default for both policies: closed-loop clients answered together
resend together, and a wait of 2 ms splits them into two half-size cohorts that then alternate
(measured on the small model: 8.3 rows per batch and 3.0x instead of 16 rows and 3.8x). Each phase
stops after `--requests` answers or `--duration` seconds, whichever comes first; the first
`--warmup` answers per client are not timed. Reported per phase: throughput (answers/s), latency
p50/p99 (ms), mean rows and prompts per batch (from the server's /metrics) and the XLA compilations
during the timed part (0 expected). Then the throughput ratio and the p99 ratio of mixed over
per-prompt.

Models: "tiny" is the embedded pretrained tiny T5 (gin_configs/models/t5_1_1_tiny_pretrained.gin);
"small" is a randomly initialised T5 1.1 small (77M parameters; t5_1_1_small.gin with
INITIAL_CHECKPOINT_PATH=None and the tiny vocabulary, so nothing is downloaded). Traffic goes to
loopback only. Quote figures with the load average printed beside them.

Output: a Markdown table on stdout and, with `--json`, the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python tools/serve_load.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.perf import serve_load  # noqa: E402


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", choices=sorted(serve_load.MODELS), default=["tiny"])
    parser.add_argument("--prompts", type=int, default=16, help="M prompts")
    parser.add_argument("--clients", type=int, default=16, help="K concurrent clients")
    parser.add_argument("--requests", type=int, default=480, help="timed answers per phase")
    parser.add_argument("--duration", type=float, default=60.0, help="max seconds per phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per client")
    parser.add_argument("--prompt_length", type=int, default=20)
    parser.add_argument("--input_words", type=int, default=12)
    parser.add_argument("--input_bucket", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=8, help="generated tokens (generate)")
    parser.add_argument("--endpoint", choices=serve_load.ENDPOINTS, default="generate")
    parser.add_argument("--labels", type=int, default=2, help="labels per request (classify)")
    parser.add_argument("--label_count_buckets", type=int, nargs="+", default=[4])
    parser.add_argument("--batch_buckets", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--batch_wait_ms", type=float, default=20.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--startup_timeout", type=float, default=600.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    serve_load.check_loopback(args.host)
    if min(args.prompts, args.clients, args.requests) < 1 or args.duration <= 0:
        parser.error("--prompts, --clients, --requests and --duration must be positive.")
    if not 1 <= args.labels <= 32:
        parser.error("--labels must be between 1 and 32 (distinct one-piece words).")
    if args.input_words + 1 > args.input_bucket:
        parser.error("--input_words + 1 (EOS) must fit in --input_bucket.")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the load test and prints the table."""
    args = parse(argv)
    results = serve_load.run(args)
    print(serve_load.table(results, args))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
