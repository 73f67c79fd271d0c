"""The step at which every process stops, when a signal may reach only some of them.

At every boundary (a training step, an evaluation or inference batch) each process contributes
its own "a signal was received" flag to a tiny jitted max over all devices of the run. The
result of boundary b is read at boundary b + 1, after the next step has been dispatched, so the
host never waits for the devices on its account: the processes agree on stopping after step
b + 1. A single process needs no collective and stops after the step it is on.

The cost per boundary is one 4-byte all-reduce (measured in docs/failures.md); with `period` N
it runs at every Nth boundary only (the processes agree within 2N boundaries of the signal; the
default is 1 on accelerators and 10 on CPUs, `default_period`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning.faults.signals import StopSignals

_AXIS = "processes"


CPU_PERIOD = 10


def default_period() -> int:
    """1 on accelerators; `CPU_PERIOD` on CPUs, whose collectives run as they are dispatched.

    On TPUs and GPUs the all-reduce is queued behind the step and read a step later, costing the
    host nothing. A CPU (gloo) collective runs when it is dispatched, after the step before it,
    so the host waits for every step: measured in docs/failures.md.
    """
    return CPU_PERIOD if jax.devices()[0].platform == "cpu" else 1


class StopAgreement:
    """Whether every process of the run stops at this boundary.

    Every process must call `should_stop` at the same boundaries (it is a collective when there
    are several processes).

    Attributes:
      signals: this process's `StopSignals`.
    """

    def __init__(self, signals: StopSignals, period: int | None = None):
        """Prepares the all-reduce (several processes only).

        Args:
          signals: this process's `StopSignals`.
          period: agree at every `period`-th boundary (the same on every process); None for
            `default_period()`.

        Raises:
          ValueError: `period` is not a positive integer.
        """
        period = default_period() if period is None else period
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"The stop check period must be a positive integer, got {period!r}.")
        self.signals = signals
        self._period = period
        self._boundaries = 0
        self._pending: jax.Array | None = None
        self._collective = jax.process_count() > 1
        if self._collective:
            devices = np.array(jax.devices())
            mesh = Mesh(devices, (_AXIS,))
            self._sharding = NamedSharding(mesh, PartitionSpec(_AXIS))
            self._local = [d for d in devices if d.process_index == jax.process_index()]
            self._shape = (devices.size,)
            self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def should_stop(self) -> bool:
        """Whether to stop after the step (batch) just dispatched; the same on every process."""
        local = self.signals.received.is_set()
        if not self._collective:
            return local
        self._boundaries += 1
        if self._boundaries % self._period:
            return False
        flag = np.array([int(local)], np.int32)
        shards = [jax.device_put(flag, d) for d in self._local]
        flags = jax.make_array_from_single_device_arrays(self._shape, self._sharding, shards)
        previous, self._pending = self._pending, self._max(flags)
        return previous is not None and bool(np.asarray(previous.addressable_data(0)))
