"""This machine's square-matmul throughput (the peak a training step is compared against).

    python tools/benchmark_matmul.py --n 2048 --repeats 8 --dtype float32 bfloat16 \
        --backend jax torch

Times `C = A @ B` for random `[n, n]` matrices, `2 n^3` FLOPs per product, and prints the best
(fastest) of `repeats` timed products as GFLOP/s, one JSON object per (backend, dtype). "bfloat16"
means bfloat16 operands: JAX accumulates them in float32 (`preferred_element_type`, as the model's
mixed-precision matmuls do; `--jax-bf16-output` times the bfloat16-output dot instead, which
XLA:CPU runs far slower), torch runs `torch.mm` in bfloat16 (oneDNN, float32 accumulation
inside). JAX reads XLA_FLAGS when it is first imported, so run this in a fresh process per flag
setting (as `tools/benchmark_train.py` does).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/benchmark_matmul.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.perf import matmul  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    """Parses the command line and prints one JSON object per (backend, dtype)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="matrix size")
    parser.add_argument("--repeats", type=int, default=8, help="timed products (best counts)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--backend", nargs="+", default=["jax", "torch"], choices=sorted(matmul.BACKENDS)
    )
    parser.add_argument(
        "--jax-bf16-output", action="store_true", help="also time jax's bfloat16-output dot"
    )
    args = parser.parse_args(argv)
    for result in matmul.measure(args.backend, args.dtype, args.n, args.repeats):
        print(json.dumps(result))
    if args.jax_bf16_output:
        gflops = matmul.jax_matmul_gflops(args.n, "bfloat16", args.repeats, bf16_output=True)
        print(
            json.dumps(
                {
                    "backend": "jax",
                    "dtype": "bfloat16->bfloat16",
                    "n": args.n,
                    "repeats": args.repeats,
                    "gflops": gflops,
                }
            )
        )


if __name__ == "__main__":
    main()
