"""Training-step benchmark: our prompt-tuning `train_step` against HF PEFT, both precisions.

    python tools/benchmark_train.py --vs-peft --rounds 2 --steps 5 --warmup 2

Setting (Lester et al., 2021): T5 1.1 of the given size with random weights, a 100-token prompt on
the encoder only, 128 input tokens (228 with the prompt), 8 target tokens, dropout 0.1, Lester's
Adafactor, gradients only with respect to the prompt. Cases are `size:batch` (default small:8,
small:32, base:8). For every case and round the systems run one after another, alternating:
ours in float32, PEFT in float32 eager then `torch.compile`d, ours in bfloat16 (bfloat16 matmul
operands with float32 accumulation, frozen weights stored in bfloat16), PEFT with
`torch.autocast(device, dtype=torch.bfloat16)` around the forward pass, eager then compiled,
then our extra settings (`--remat-layers`). `--peft-modes` picks PEFT's modes (`float32-eager`,
`float32-compiled`, `bfloat16-eager`, `bfloat16-compiled`; default: those of `--dtypes`);
compiled is inductor's default mode on the model (forward, and backward through AOTAutograd) and
on AdamW's step, compiled in the first untimed step (`compile_s`, excluded from the medians). Ours
is compared with PEFT's fastest mode of the same precision in the same run. Each run is its own
subprocess (XLA_FLAGS apply at import; its peak RSS is its own; the PEFT worker imports torch,
transformers and peft only, ours jax, flax and this library without TensorFlow or seqio).

`--device cuda` runs ours with JAX_PLATFORMS=cuda and PEFT on torch's cuda device, measures the
matmul peaks on the GPU (`--matmul-size` 8192 there) and reports GPU peak memory beside RSS and
MFU (step FLOPs per second over the measured bfloat16 matmul peak, and over `--peak-tflops`,
default 989 on cuda; base:32 and large:8 are the GPU cases):

    python tools/benchmark_train.py --device cuda --vs-peft --dtypes bfloat16 --cases base:32

Per run: the median seconds per step after `--warmup` untimed steps (compilation is done ahead of
time and reported apart), CPU seconds per step (all threads; less sensitive to other processes
than wall time), examples/s, tokens/s (input + target tokens), peak RSS (`ru_maxrss`, also after
the imports and, for ours, after compiling), achieved FLOP/s by `prompt_tuning.perf.costs.
step_flops` and its fraction of the square-matmul peak of the same precision measured in the same
run (before and after the runs; the higher counts), the FLOPs of the dots XLA compiled
(`dot_flops`, equal to `step_flops`), XLA's own cost estimate, the frozen-weight gradient ops in
the compiled step (0 when only the prompt is differentiated) and the losses of the timed steps.
`--profile` adds, for ours, one profiled step's time per category (matmuls, attention softmax,
dropout, layer norm, ...; `prompt_tuning.perf.profiling`).

Output: one JSON document on stdout (`{"runs": [...], "summary": {...}}`), with `summary.
comparisons` (speed and memory ratios against PEFT at the same precision, medians over rounds)
and `summary.goals`; a Markdown table of the same figures on stderr at the end. Quote wall time
only from an otherwise idle machine, with the 1-minute load average recorded beside every run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/benchmark_train.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.perf import train_benchmark, workers  # noqa: E402


def parse(argv: Sequence[str] | None = None) -> train_benchmark.BenchmarkSettings:
    """The command line (see the module docstring) as the library's settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", nargs="+", default=list(train_benchmark.DEFAULT_CASES), help="size:batch"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
        help="activation dtypes (ours and PEFT)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--vs-peft", action="store_true", help="also time HF PEFT (torch)")
    parser.add_argument(
        "--frozen-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="FROZEN_DTYPE of ours; auto: the activation dtype",
    )
    parser.add_argument(
        "--remat-layers",
        nargs="+",
        default=["none"],
        choices=["none", "full", "dots"],
        help="T5Config.remat_policy settings of ours (each one a run)",
    )
    parser.add_argument("--no-donate", dest="donate", action="store_false")
    parser.add_argument(
        "--prng-impl",
        default=None,
        choices=["threefry2x32", "rbg", "unsafe_rbg"],
        help="jax_default_prng_impl of ours (default: jax's)",
    )
    parser.add_argument("--xla-flags", default="", help="XLA_FLAGS of our runs")
    parser.add_argument(
        "--host-malloc",
        default="auto",
        choices=["auto", "reuse", "system"],
        help="glibc malloc of every worker, ours and PEFT alike (parallel.host_memory)",
    )
    parser.add_argument("--profile", action="store_true", help="profile one step of ours")
    parser.add_argument("--input-length", type=int, default=128)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--target-length", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--trainable-regex", default="prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="n of the matmul peaks (2048 cpu, 8192 cuda)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    parser.add_argument(
        "--peft-modes",
        nargs="+",
        default=None,
        choices=train_benchmark.PEFT_MODES,
        help="PEFT's modes with --vs-peft (default: every mode of --dtypes)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="nominal bf16 peak for MFU (default on cuda: 989, H100/H200 SXM dense)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0.")
    for case in args.cases:
        size, _, batch = case.partition(":")
        if size not in workers.SIZES or not batch.isdigit():
            parser.error(f"--cases takes size:batch with a size in {workers.SIZES}, got {case!r}.")
    settings = train_benchmark.BenchmarkSettings(**vars(args))
    try:
        settings.modes()
    except ValueError as error:
        parser.error(str(error))
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: runs the benchmark (`prompt_tuning.perf.train_benchmark`), prints its JSON."""
    print(json.dumps(train_benchmark.run_benchmark(parse(argv)), indent=1))


if __name__ == "__main__":
    main()
