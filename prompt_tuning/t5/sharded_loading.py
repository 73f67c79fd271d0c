"""Loading a frozen T5 straight into global `jax.Array`s: each host reads only its devices' slices.

`load_checkpoint_sharded(path, shardings)` checks the checkpoint's shapes against the config
before reading anything, then builds every parameter with `jax.make_array_from_callback`: the
callback runs once per slice that this process's devices hold and reads just that slice —
through tensorstore for a legacy T5X checkpoint's zarr arrays, through `safetensors.get_slice` for
an HF folder (transposed tensors are sliced transposed), and an orbax/OCDBT checkpoint is restored
by orbax with the target shardings. Replicated slices are read once per host, not once per device.

So with the "model" mesh axis over N devices a host holds about 1/N of the model (plus whatever is
replicated), never the whole of it; `LoadStats` reports what this process read and its peak
resident memory (RSS) while loading, which the trainer prints.

Letters: V vocabulary, H model dim.
"""

import dataclasses
import os
import resource
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from prompt_tuning.t5 import checkpoint_tree, checkpoints, orbax_format
from prompt_tuning.t5.config import T5Config


def current_rss() -> int:
    """This process's resident memory in bytes (Linux `/proc`; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class RssMonitor:
    """Samples this process's RSS every `interval` seconds while in a `with` block.

    Attributes:
      start: RSS on entry (bytes).
      peak: the largest RSS seen (bytes).
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            time.sleep(self.interval)

    def __enter__(self) -> "RssMonitor":
        self.start = self.peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())


@dataclasses.dataclass
class LoadStats:
    """What loading cost this process.

    Attributes:
      kind: "hf", "t5x" or "orbax".
      num_arrays: parameters loaded.
      global_bytes: their global size (in the loaded dtype).
      bytes_read: bytes this process read from slices (stored dtype; orbax: not counted, -1).
      slices_read: slices this process read.
      rss_start: RSS before loading (bytes).
      rss_peak: peak RSS while loading (bytes).
      seconds: wall time.
    """

    kind: str
    num_arrays: int = 0
    global_bytes: int = 0
    bytes_read: int = 0
    slices_read: int = 0
    rss_start: int = 0
    rss_peak: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the log."""
        read = ""
        if self.bytes_read >= 0:
            read = (
                f"; this process read {human_bytes(self.bytes_read)} ({self.bytes_read:,} bytes) "
                f"in {self.slices_read} slices"
            )
        return (
            f"Loaded the frozen model ({self.kind}, {self.num_arrays} arrays, "
            f"{human_bytes(self.global_bytes)} over the mesh{read}) in {self.seconds:.1f} s; "
            f"host RSS {human_bytes(self.rss_start)} -> peak {human_bytes(self.rss_peak)} while "
            "loading."
        )


def human_bytes(count: float) -> str:
    """`1536` -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"


def _index_key(index: checkpoint_tree.Index | None) -> tuple:
    """A hashable key of a slice tuple (slices are not hashable before Python 3.12)."""
    return tuple((s.start, s.stop, s.step) for s in (index or ()))


def _global_array(
    reader: checkpoint_tree.ArrayReader, sharding: jax.sharding.Sharding, dtype: Any, stats
) -> jax.Array:
    """One parameter as a global array; each distinct slice of this host is read once."""
    cache: dict[tuple, np.ndarray] = {}
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(reader.dtype)

    def read(index: checkpoint_tree.Index | None) -> np.ndarray:
        key = _index_key(index)
        if key not in cache:
            part = reader.read(index)
            stats.bytes_read += part.nbytes
            stats.slices_read += 1
            cache[key] = np.ascontiguousarray(part.astype(out_dtype, copy=False))
        return cache[key]

    array = jax.make_array_from_callback(tuple(reader.shape), sharding, read, dtype=out_dtype)
    cache.clear()
    return array


def load_checkpoint_sharded(
    path: str | os.PathLike,
    shardings: Mapping[str, jax.sharding.Sharding],
    config: T5Config | None = None,
    dtype: Any = None,
) -> tuple[T5Config, checkpoint_tree.Params, LoadStats]:
    """Loads a frozen T5 checkpoint into global arrays of the given shardings.

    Every process of a multi-host run calls it with the same arguments; each reads only the slices
    of its own devices.

    Args:
      path: an HF folder, a legacy T5X checkpoint (`checkpoint_N/`, also `gs://`) or an orbax one.
      shardings: `{"/"-joined name: Sharding}` for every parameter of the model (e.g. from
        `partitioning.params_shardings`); parameters the checkpoint has beyond these (a T5X
        prompt) are not loaded.
      config: the config the parameters must fit (None: `config.json` or inferred).
      dtype: the dtype of the loaded arrays (e.g. bfloat16 frozen weights), or `{name: dtype}`
        for some of them (`checkpoint_tree.dtype_for`); None keeps the stored.

    Returns:
      `(config, params, stats)`: `params` the nested tree of global `jax.Array`s.

    Raises:
      CheckpointError: unreadable or corrupt files, or shapes that do not fit `config` (checked
        before any array is read).
    """
    path = os.fspath(path)
    start = time.perf_counter()
    kind, found, shapes = checkpoints.checkpoint_shapes(path)
    config = checkpoints.resolve_config(path, shapes, found, config)
    missing = sorted(set(shardings) - set(shapes))
    if missing:
        raise checkpoint_tree.CheckpointError(
            f"Checkpoint {path} lacks parameters the model needs: {missing[:6]}."
        )
    stats = LoadStats(kind)
    with RssMonitor() as monitor:
        if kind == "orbax":
            stats.bytes_read = -1
            flat = orbax_format.load_orbax(path, dtype, names=set(shardings), shardings=shardings)
        else:
            _, _, readers = checkpoints.open_readers(path, names=set(shardings))
            flat = {
                name: _global_array(
                    readers[name], shardings[name], checkpoint_tree.dtype_for(dtype, name), stats
                )
                for name in sorted(shardings)
            }
    stats.num_arrays = len(flat)
    stats.global_bytes = sum(a.size * a.dtype.itemsize for a in flat.values())
    stats.rss_start, stats.rss_peak = monitor.start, monitor.peak
    stats.seconds = time.perf_counter() - start
    return config, checkpoint_tree.unflatten(flat), stats
