"""Decoding benchmark: our greedy decoding and rank classification against HF PEFT's.

    python tools/benchmark_decode.py --cases small base --rounds 2 --steps 5 --warmup 2

Setting (issue 22): T5 1.1 of the given sizes with random weights, a 100-token prompt on the
encoder only, 128 input tokens (228 with the prompt), batch 32. Tasks: "greedy", exactly 16 new
tokens with the KV cache (ours: `predict.predictor.Predictor`'s compiled program, the one the
evaluation loop and `pt-serve` run; PEFT: `generate` with `min_new_tokens = max_new_tokens`,
greedy, `use_cache=True`, under `torch.inference_mode()`), and "rank", rank classification of 2
label strings (random tokens + EOS: ours `Predictor.label_scores`' program over the B*C label
rows; PEFT one forward pass over the same rows, the per-row sum of target log-probs, argmax).
Precisions: float32, and bfloat16 (ours: bfloat16 activations and frozen weights, as
FROZEN_DTYPE="bfloat16" evaluates; PEFT: autocast, `.to(bfloat16)`, and for rank classification
both under `torch.compile` too). Both systems get the same weights (written once per size), so
the run also checks ours against transformers: the fraction of equal greedy tokens and of equal
rank choices is recorded. Each system and mode runs in its own subprocess, one after another,
alternating over `--rounds`; `--device cuda` runs both on the GPU.

Per run: the median seconds per batch after `--warmup` untimed batches (our compilation, and PEFT's
`torch.compile`, timed apart), examples/s, CPU seconds, peak RSS (and GPU peak memory on cuda), the
new tokens per row, the 1-minute load average and our program's matmul GFLOP per batch
(`perf.costs.greedy_flops` / `score_flops`; with the GFLOP/s they give our share of the matmul peak
of `tools/benchmark_matmul.py`, and the time any system needs at that peak). Output: a JSON document
on stdout (`{"runs": [...], "summary": {...}}`, `summary.comparisons`: ours against the fastest PEFT
mode of the same task, size and precision; `summary.goals`: >= 2x) and a Markdown table on stderr.
Quote wall time only from an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/benchmark_decode.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.perf import decode_benchmark, workers  # noqa: E402


def parse(argv: Sequence[str] | None = None) -> decode_benchmark.DecodeSettings:
    """The command line (see the module docstring) as the library's settings."""
    defaults = decode_benchmark.DecodeSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(defaults.cases), choices=workers.SIZES)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument(
        "--dtypes", nargs="+", default=list(defaults.dtypes), choices=["float32", "bfloat16"]
    )
    parser.add_argument(
        "--tasks", nargs="+", default=list(defaults.tasks), choices=decode_benchmark.TASKS
    )
    parser.add_argument(
        "--peft-modes",
        nargs="+",
        default=list(defaults.peft_modes),
        choices=decode_benchmark.ALL_PEFT_MODES,
        help="PEFT modes (compiled ones run for rank classification only)",
    )
    parser.add_argument("--device", default=defaults.device, choices=["cpu", "cuda"])
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--input-length", type=int, default=defaults.input_length)
    parser.add_argument("--prompt-length", type=int, default=defaults.prompt_length)
    parser.add_argument("--num-labels", type=int, default=defaults.num_labels)
    parser.add_argument("--label-length", type=int, default=defaults.label_length)
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="timed batches")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed batches")
    parser.add_argument(
        "--host-malloc",
        default=defaults.host_malloc,
        choices=["auto", "reuse", "system"],
        help="glibc malloc of every worker, ours and PEFT alike (parallel.host_memory)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="s per worker")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0.")
    if min(args.batch, args.new_tokens, args.input_length, args.num_labels) < 1:
        parser.error("--batch, --new-tokens, --input-length and --num-labels must be >= 1.")
    if args.label_length < 2:
        parser.error("--label-length counts EOS: it must be >= 2.")
    return decode_benchmark.DecodeSettings(**vars(args))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: runs the benchmark (`prompt_tuning.perf.decode_benchmark`), prints its JSON."""
    print(json.dumps(decode_benchmark.run_benchmark(parse(argv)), indent=1))


if __name__ == "__main__":
    main()
