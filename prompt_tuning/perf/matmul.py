"""Square-matmul throughput of this machine: the peak a training step is compared against.

Times `C = A @ B` for random `[n, n]` matrices, `2 n^3` FLOPs per product, and reports the best
(fastest) of `repeats` timed products as GFLOP/s. "bfloat16" means bfloat16 operands: JAX
accumulates them in float32 (`preferred_element_type`, as the model's mixed-precision matmuls
do; `bf16_output` times the bfloat16-output dot instead, which XLA:CPU runs far slower), torch
runs `torch.mm` in bfloat16 (oneDNN, float32 accumulation inside). jax and torch are imported
inside the functions that time them, so callers can set XLA_FLAGS first (JAX reads them on its
first import) and importing this module imports neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `repeats` calls of `run` (which must block until done), after one."""
    run()  # compile / warm caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def jax_matmul_gflops(
    n: int = 2048, dtype: str = "float32", repeats: int = 8, bf16_output: bool = False
) -> float:
    """Best-of-`repeats` GFLOP/s of a jitted `[n, n] @ [n, n]` on JAX's default device.

    Args:
      n: matrix size.
      dtype: operand dtype, "float32" or "bfloat16".
      repeats: timed products; the fastest counts.
      bf16_output: with bfloat16 operands, produce (and accumulate in) bfloat16 instead of
        float32.

    Returns:
      `2 n^3 / seconds / 1e9`.
    """
    import jax  # noqa: PLC0415 (imported late so callers can set XLA_FLAGS first)
    import jax.numpy as jnp  # noqa: PLC0415

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype)
    accumulate = jnp.bfloat16 if bf16_output else jnp.float32
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=accumulate))
    seconds = _best_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
    return 2 * n**3 / seconds / 1e9


def torch_matmul_gflops(
    n: int = 2048, dtype: str = "float32", repeats: int = 8, device: str = "cpu"
) -> float:
    """Best-of-`repeats` GFLOP/s of `torch.mm` (CPU: oneDNN, AMX/AVX-512 for bfloat16; cuda:
    cuBLAS, timed to `torch.cuda.synchronize`).

    Args:
      n: matrix size.
      dtype: "float32" or "bfloat16".
      repeats: timed products; the fastest counts.
      device: torch's device, "cpu" or "cuda".

    Returns:
      `2 n^3 / seconds / 1e9`.
    """
    import torch  # noqa: PLC0415

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, getattr(torch, dtype))
    b = torch.randn(n, n, generator=generator).to(device, getattr(torch, dtype))
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None

    def run() -> None:
        torch.mm(a, b)
        synchronize()

    with torch.inference_mode():
        seconds = _best_seconds(run, repeats)
    return 2 * n**3 / seconds / 1e9


BACKENDS = {"jax": jax_matmul_gflops, "torch": torch_matmul_gflops}


def measure(
    backends: Sequence[str],
    dtypes: Sequence[str],
    n: int = 2048,
    repeats: int = 8,
    device: str = "cpu",
) -> list[dict[str, object]]:
    """Measures every (backend, dtype) pair.

    Args:
      backends: names in `BACKENDS`.
      dtypes: "float32" and/or "bfloat16".
      n: matrix size.
      repeats: timed products per pair.
      device: "cpu" or "cuda": torch's device (JAX's is its default device, i.e. the
        process's JAX_PLATFORMS).

    Returns:
      One dict per pair: backend, dtype, n, repeats, gflops.

    Raises:
      ValueError: an unknown backend.
    """
    results = []
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"Unknown matmul backend {backend!r}; use one of {sorted(BACKENDS)}.")
        for dtype in dtypes:
            kwargs = {"device": device} if backend == "torch" else {}
            gflops = BACKENDS[backend](n, dtype, repeats, **kwargs)
            results.append(
                {"backend": backend, "dtype": dtype, "n": n, "repeats": repeats, "gflops": gflops}
                | {"device": device}
            )
    return results
