"""Random parameters of a T5 drawn by small programs, one per kind of parameter.

Flax initializes a model by tracing it and compiling one program that holds every parameter's
initializer. For T5 1.1 base that is 217 truncated-normal draws, each with its own threefry hash
and inverse-erf expansion: a 100k-instruction HLO module whose compilation (XLA's HLO passes grow
faster than the module) took 16-18 s on a 2-core CPU and 100-130 s on an H200 machine (jax
0.11.2), longer than compiling the training step itself.

Here `recording()` notes each parameter's initializer while the model's shapes are traced
(`layers._param` reports every T5 parameter with `note`), and `draw` then makes each parameter
with a jitted program of its initializer alone, compiled once per distinct computation: same
initializer code, constants, shape, dtype and sharding. A T5 needs about ten such programs, each
a few hundred instructions. Parameter `path` gets its own key, `fold_in(rng, crc32(path))`: the
same on every host and in every run of the same seed, whatever the order of the draws.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

_RECORDING: contextvars.ContextVar[dict[str, Draw] | None] = contextvars.ContextVar(
    "random_init_recording", default=None
)


@dataclasses.dataclass(frozen=True)
class Draw:
    """How one parameter is initialized: `init(key, shape, dtype)`."""

    init: Callable[..., jax.Array]
    shape: tuple[int, ...]
    dtype: Any


@contextlib.contextmanager
def recording() -> Iterator[dict[str, Draw]]:
    """Within it, `note` records parameters into the dict it yields (`{"a/b/kernel": Draw}`)."""
    draws: dict[str, Draw] = {}
    token = _RECORDING.set(draws)
    try:
        yield draws
    finally:
        _RECORDING.reset(token)


def note(path: Sequence[str], init: Callable[..., jax.Array], shape: Any, dtype: Any) -> None:
    """Records the initializer of the parameter at `path` (its module's scope path and name) if
    `recording()` is active (else does nothing)."""
    draws = _RECORDING.get()
    if draws is not None:
        draws["/".join(path)] = Draw(init, tuple(int(n) for n in shape), dtype)


def _signature(fn: Callable[..., Any], args: tuple, sharding: Any) -> tuple:
    """What makes two draw programs the same program: their jaxpr (text and constants' values)
    and output sharding."""
    closed = jax.make_jaxpr(fn)(*args)
    digest = hashlib.sha256()
    for const in closed.consts:
        value = np.asarray(const)
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return str(closed.jaxpr), digest.hexdigest(), sharding


def draw(
    draws: Mapping[str, Draw],
    rng: jax.Array,
    shardings: Mapping[str, Any],
    dtypes: Mapping[str, Any] | None = None,
) -> dict[str, jax.Array]:
    """Initializes every parameter of `shardings` from its recorded `Draw`.

    Args:
      draws: recorded initializers (`recording()`), a superset of `shardings`' paths.
      rng: the initialization key.
      shardings: `{"a/b/kernel": sharding}` of the parameters to make.
      dtypes: `{path: dtype}` to cast a parameter to inside its program (None or missing: the
        recorded dtype), so that no copy in the recorded dtype is ever materialised.

    Returns:
      `{path: array}` with each array in its sharding.

    Raises:
      KeyError: a path of `shardings` has no recorded initializer.
    """
    dtypes = dtypes or {}
    programs: dict[tuple, Any] = {}
    out = {}
    for path, sharding in shardings.items():
        spec = draws[path]
        cast = dtypes.get(path) or spec.dtype

        def fn(key: jax.Array, salt: jax.Array, spec: Draw = spec, cast: Any = cast) -> jax.Array:
            return spec.init(jax.random.fold_in(key, salt), spec.shape, spec.dtype).astype(cast)

        salt = np.uint32(zlib.crc32(path.encode()))
        signature = _signature(fn, (rng, salt), sharding)
        if signature not in programs:
            programs[signature] = jax.jit(fn, out_shardings=sharding)
        out[path] = programs[signature](rng, salt)
    return out
