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
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python tools/serve_ready_time.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.perf import serve_ready  # noqa: E402


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parses the command line, times the starts (`serve_ready.cold_and_warm`), prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="cold + warm pairs")
    parser.add_argument("--timeout", type=float, default=600.0)
    args, flags = parser.parse_known_args(argv)
    bad = [f for f in flags if not f.startswith("--gin.")]
    if bad:
        parser.error(f"unknown arguments {bad}; server flags are --gin.NAME=VALUE")
    print(
        "| start | live s | first answer s | ready s | warm-up s | CPU s at live | CPU s at "
        "ready | programs | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for t in serve_ready.cold_and_warm(args.runs, flags, args.timeout):
        rows.append(t)
        print(
            f"| {t['start']} | {t['live']:.1f} | {t['first_answer']:.1f} | {t['ready']:.1f} "
            f"| {t['warmup']:.1f} | {t['live_cpu'] or 0:.1f} | {t['cpu'] or 0:.1f} "
            f"| {t['programs']} "
            f"| {t['load']:.1f} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
