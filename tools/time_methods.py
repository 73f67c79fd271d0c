r"""Training step time of comparison methods on the frozen tiny T5 (docs/results.md, DePT vs PT).

Each method's whole training run is compiled once (`tools/_compare_lib.MethodRunner`, the same
program as `tools/compare_methods.py`), then the methods' runs alternate `--repeats` times so
that a change in the machine's load hits every method alike; the mean time per step is printed
with each run's:

    python tools/time_methods.py --methods pt_random_uniform dept

Settings are the comparison's defaults (P = 20, batch 32, 200 steps, builtin_sentiment, seed 0,
rate 0.01). Transfer methods are not timed (they need source prompts).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/time_methods.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from tools import _compare_lib as lib  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Times the methods' training runs and prints ms per step."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["pt_random_uniform", "dept"])
    parser.add_argument("--model_gin", default="gin_configs/models/t5_1_1_tiny_pretrained.gin")
    parser.add_argument("--task", default="builtin_sentiment")
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool_size", type=int, default=6400, help="Training examples tokenized.")
    args = parser.parse_args(argv)
    for name in args.methods:
        if name not in lib.METHODS or lib.METHODS[name].sources:
            parser.error(f"{name!r}: give a method of tools/_compare_lib.METHODS without sources.")
    tasks, lengths = lib.load_tasks([args.task], args.pool_size, 8)
    task = tasks[args.task]
    runs = {}
    with tempfile.TemporaryDirectory() as workdir:
        frozen = lib.load_frozen(args.model_gin, workdir)
        for name in args.methods:
            method = lib.METHODS[name]
            build = lambda labels, m=method: lib.build_module(
                frozen, m, args.length, labels, input_length=lengths[0]
            )
            runner = lib.MethodRunner(
                build, frozen, method.trainable_regex, lengths, method.make_optimizer()
            )
            initial = runner.initial(0, task.labels)
            batches = lib.run_batches(task.train, args.steps, args.batch_size, 0)
            jax.block_until_ready(runner.train(initial, batches, 0, 0.01))  # compiles
            runs[name] = (runner, initial, batches, runner.count(initial))
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (runner, initial, batches, _) in runs.items():
                start = time.perf_counter()
                jax.block_until_ready(runner.train(initial, batches, 0, 0.01))
                times[name].append(1000 * (time.perf_counter() - start) / args.steps)
    for name, values in times.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(
            f"{name}: {runs[name][3]:,} trainable, {sum(values) / len(values):.0f} ms/step "
            f"(runs: {shown})"
        )
    print(f"1-minute load at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
