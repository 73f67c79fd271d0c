"""Does a frozen T5 fit? Per-device memory of the real train step and decode step, compiled AOT.

    python tools/aot_memory.py --sizes xxl --devices 32 --partitions 8 16 --remat none full
    python tools/aot_memory.py --sizes large xl xxl --devices 8 32 128 --output docs/scaling.json
    python tools/aot_memory.py --table run1.log run2.json   # one table from earlier runs' output

For every size, device count, model-axis size, remat policy and activation dtype it compiles the
training step (`prompt_tuning.train.step`, the trainer's program) and one cached decode step on
a mesh of fake CPU devices, from abstract parameters (nothing is allocated), and prints one JSON
line per program: per-device arguments, temporaries, outputs and their total (GiB) and the compile
time, then a Markdown table marking what fits 16 GiB (a TPU v3 core) and 32 GiB (a v4 chip's
core pair as one device). Each device count runs in its own subprocess, started with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`.

Defaults are Lester et al.'s setting: batch 32, 512 input tokens + a 100-token prompt, 16
targets, dropout 0.1, bfloat16 frozen weights, Adafactor. Compiling XXL for a 32-device mesh takes
minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python tools/aot_memory.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.perf import aot_sweep  # noqa: E402


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parses the command line, runs the sweep (or reads `--table` files) and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["large", "xl", "xxl"])
    parser.add_argument("--devices", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--partitions", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--remat", nargs="+", default=["none", "full"])
    parser.add_argument("--activation-dtype", nargs="+", default=["float32"])
    parser.add_argument("--frozen-dtype", default="bfloat16")
    parser.add_argument("--programs", nargs="+", default=["train", "decode"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=100)
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--xla",
        choices=["simulate", "default"],
        default="simulate",
        help="'simulate': XLA:CPU with the memory-optimised scheduler and without its all-reduce "
        "combiner (prompt_tuning.perf.aot.SIMULATION_OPTIONS); 'default': XLA:CPU as it is "
        "(its default scheduler, also for remat steps: aot.CPU_DEFAULT_OPTIONS)",
    )
    parser.add_argument(
        "--activation-partitioning-dims",
        type=int,
        choices=[1, 2],
        default=2,
        help="T5X's: 2 also splits activations' H over the model axis (the default here)",
    )
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument(
        "--table",
        nargs="+",
        metavar="FILE",
        help="compile nothing: print the table of earlier runs' --output files or printed lines",
    )
    args = parser.parse_args(argv)
    if args.table:
        results = aot_sweep.read_results(args.table)
        print(aot_sweep.markdown_table(results))
        return results
    results = aot_sweep.run_sweep(aot_sweep.sweep_specs(args), args.devices)
    print(aot_sweep.markdown_table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
