"""Host memory while loading a frozen T5: sharded over processes vs one process holding it all.

    python tools/benchmark_loading.py --size base --format t5x --processes 2 --devices 4

Writes a random T5 1.1 checkpoint of the given size and format once (float32), then loads it with
`t5.sharded_loading.load_checkpoint_sharded` (the trainer's loader) in fresh processes:

- "sharded": `--processes` processes x `--devices` CPU devices on one ("data", "model") mesh with
  the model axis over all of them (NUM_PARTITIONS = processes x devices), as a multi-host run
  loads XXL: each process reads only its devices' slices;
- "one device": a single process with one device, which must hold the whole model.

It prints one JSON line per process: bytes read, the RSS before loading and its peak while loading
(sampled every 5 ms), and the loaded model's size; then a summary. On CPU, "device" memory is host
memory, so the peak counts the loaded shards too.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

if __package__ in (None, ""):  # run as `python tools/benchmark_loading.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.perf import loading  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parses the command line, loads both ways (`loading.compare`), prints the JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--format", choices=["t5x", "hf", "orbax"], default="t5x")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--checkpoint", help="reuse this checkpoint instead of writing one")
    args = parser.parse_args(argv)
    path = args.checkpoint
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), f"{args.size}_{args.format}")
        loading.write_checkpoint(args.size, args.format, path)
    sharded, whole, summary = loading.compare(path, args.size, args.processes, args.devices)
    for result in sharded + whole:
        print(json.dumps(result))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
