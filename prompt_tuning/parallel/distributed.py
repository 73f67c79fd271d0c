"""Several processes, one mesh: T5X's launch flags and data layout.

Launch (as T5X's `--multiprocess_gpu`, `--coordinator_address`, `--process_count`,
`--process_index`; see the README's multi-host section):

- TPU slices need no flag: every host runs the same command; on a Cloud TPU VM (or GKE) JAX's
  cluster detection finds the others (`jax.distributed.initialize()` without arguments).
- GPUs on several nodes: `--multiprocess_gpu` with the coordinator flags (or none of them under
  SLURM/Open MPI, which JAX detects).
- Several processes on one CPU machine: the coordinator flags and, in each process,
  `XLA_FLAGS=--xla_force_host_platform_device_count=N`; CPU collectives go through gloo.

`data_layout(mesh, batch_size)` is T5X's `partitioner.get_data_layout()`: every data-parallel
replica set (the processes whose devices hold the same rows of the "data" axis) reads its own
shard of the data; the processes of one replica set read the same examples.

Two private JAX modules stay, because JAX 0.10.2 has no public equivalent (checked: the public
`jax.distributed` is `initialize`/`is_initialized`/`shutdown`, `jax.experimental.multihost_utils`
has collectives but no key-value store and no cluster detection); each is guarded by
tests/parallel_distributed_test.py, which fails naming the attribute that moved:
- `jax._src.clusters.cloud_tpu_cluster`: whether this host is a Cloud TPU VM or GKE TPU node,
  asked BEFORE `jax.distributed.initialize()` (which, without arguments, would also join SLURM or
  Open MPI clusters that the user did not ask for, and fails elsewhere).
- `jax._src.distributed.global_state.client`: the coordinator's key-value store, which the
  `faults.watchdog` heartbeats use to name a lost process.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
from jax.sharding import Mesh

from prompt_tuning.faults import watchdog
from prompt_tuning.parallel.partitioning import DATA_AXIS

_watchdog: list[watchdog.PeerWatchdog] = []  # this process's, once it joined a run


def initialize(
    coordinator_address: str | None = None,
    process_count: int | None = None,
    process_index: int | None = None,
    multiprocess_gpu: bool = False,
    initialization_timeout: int = 300,
    lost_process_timeout: float = watchdog.DEFAULT_TIMEOUT,
) -> bool:
    """Joins this process to a multi-process JAX run (T5X's launch flags); checks them first.

    Without `coordinator_address` and `multiprocess_gpu`, only a Cloud TPU environment is joined
    (JAX detects its hosts); elsewhere nothing happens (one process). Calling it again is a no-op.

    Args:
      coordinator_address: `host:port` of process 0's coordinator (`--coordinator_address`).
      process_count: number of processes (`--process_count`).
      process_index: this process's index, 0 .. process_count - 1 (`--process_index`).
      multiprocess_gpu: T5X's `--multiprocess_gpu`: initialize even without the flags above
        (cluster auto-detection: SLURM, Open MPI).
      initialization_timeout: seconds to wait for every process to join.
      lost_process_timeout: seconds without a heartbeat after which another process counts as
        lost and this one exits with status 69, naming it (`--lost_process_timeout`; see
        `faults.watchdog`). JAX's own heartbeat timeout is set above it.

    Returns:
      Whether `jax.distributed.initialize` was called.

    Raises:
      ValueError: inconsistent flags, or fewer processes joined than `process_count`; both are
        found before any work and named with the fix.
    """
    if not (coordinator_address or multiprocess_gpu):
        if process_count not in (None, 1) or process_index not in (None, 0):
            raise ValueError(
                f"--process_count={process_count} / --process_index={process_index} need "
                "--coordinator_address=HOST:PORT (the address of process 0)."
            )
        if not _cloud_tpu() or jax.distributed.is_initialized():
            return False
        _disable_jax_preemption_service()
        jax.distributed.initialize(  # JAX's TPU cluster detection finds every host
            heartbeat_timeout_seconds=_jax_heartbeat_timeout(lost_process_timeout)
        )
        _start_watchdog(lost_process_timeout)
        return True
    if coordinator_address:
        if process_count is None or process_index is None:
            raise ValueError(
                "--coordinator_address needs --process_count (the number of processes) and "
                "--process_index (0 .. process_count - 1) in every process."
            )
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(
                f"--process_index={process_index} must be in 0 .. {process_count - 1} "
                f"(--process_count={process_count})."
            )
    if jax.distributed.is_initialized():
        return False
    # CPU collectives across processes need gloo (accelerators use their own; this is harmless).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _disable_jax_preemption_service()
    try:
        jax.distributed.initialize(
            coordinator_address,
            process_count,
            process_index,
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=_jax_heartbeat_timeout(lost_process_timeout),
        )
    except Exception as error:  # noqa: BLE001 (jaxlib raises bare XlaRuntimeErrors)
        raise ValueError(
            f"Process {process_index} could not join the run at {coordinator_address} "
            f"({type(error).__name__}: {str(error)[:300]}). Check that --process_count "
            f"({process_count}) processes were started with the same --coordinator_address and "
            "distinct --process_index values, and that process 0 is reachable."
        ) from error
    if process_count is not None and jax.process_count() != process_count:
        raise ValueError(
            f"--process_count={process_count} but the coordinator counts {jax.process_count()} "
            "processes; start every process with the same --process_count."
        )
    logging.info(
        "Process %d of %d: %d local of %d devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    _start_watchdog(lost_process_timeout)
    return True


def _disable_jax_preemption_service() -> None:
    """Turns off JAX's C++ SIGTERM notifier: `faults.signals` handles SIGTERM (and SIGINT)."""
    jax.config.update("jax_enable_preemption_service", False)


def _jax_heartbeat_timeout(lost_process_timeout: float) -> int:
    """JAX's heartbeat timeout: above ours, so that the watchdog names the lost process first."""
    if lost_process_timeout <= 0:
        raise ValueError(
            f"--lost_process_timeout={lost_process_timeout} must be a positive number of seconds."
        )
    return max(100, int(2 * lost_process_timeout) + 10)


def _start_watchdog(lost_process_timeout: float) -> None:
    """Starts this process's `faults.watchdog.PeerWatchdog` (several processes only)."""
    from jax._src import distributed as jax_distributed  # noqa: PLC0415 (its client)

    client = jax_distributed.global_state.client
    if jax.process_count() < 2 or client is None or _watchdog:
        return
    _watchdog.append(
        watchdog.PeerWatchdog(
            client, jax.process_index(), jax.process_count(), lost_process_timeout
        )
    )
    if is_primary():
        logging.warning(watchdog.describe_coordinator_loss())


def _cloud_tpu() -> bool:
    """Whether this is a Cloud TPU VM or GKE TPU host (JAX's own cluster detection; private, see
    the module docstring)."""
    try:
        from jax._src.clusters import cloud_tpu_cluster  # noqa: PLC0415
    except ImportError:
        return False
    if not getattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", False):
        return False
    clusters = (cloud_tpu_cluster.GceTpuCluster, cloud_tpu_cluster.GkeTpuCluster)
    return any(cluster.is_env_present() for cluster in clusters)


def is_primary() -> bool:
    """Whether this process writes the run's files (prompts, metrics, config, TensorBoard)."""
    return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Which data a process reads (T5X's `DataLayout`).

    Attributes:
      batch_size: examples this process feeds per step: its replica set's rows of the global
        batch, `[shard_id * batch_size, (shard_id + 1) * batch_size)`.
      shard_id: this process's data shard (its replica set's index).
      num_shards: number of data shards (replica sets).
      is_first_host_in_replica_set: the lowest process index of its replica set.
    """

    batch_size: int
    shard_id: int
    num_shards: int
    is_first_host_in_replica_set: bool


def data_layout(mesh: Mesh, batch_size: int, process_index: int | None = None) -> DataLayout:
    """How a global batch is read across processes for `mesh`.

    The rows of the "data" axis that a process's devices hold form its replica set; processes with
    the same rows read the same examples (the model axis spans them), processes with other rows
    read other shards.

    Args:
      mesh: the device mesh.
      batch_size: the global batch size (divisible by the data axis).
      process_index: the process (default this one).

    Returns:
      Its `DataLayout`.

    Raises:
      ValueError: the mesh gives a process rows that are not contiguous or that overlap another
        process's rows only in part (a layout no data shard can feed).
    """
    process_index = jax.process_index() if process_index is None else process_index
    data_size = mesh.shape[DATA_AXIS]
    rows: dict[int, set[int]] = {}
    for row, devices in enumerate(mesh.devices.reshape(data_size, -1)):
        for device in devices:
            rows.setdefault(device.process_index, set()).add(row)
    sets = sorted({tuple(sorted(r)) for r in rows.values()})
    covered = sorted(row for rows_of in sets for row in rows_of)
    contiguous = all(s == tuple(range(s[0], s[-1] + 1)) for s in sets)
    if not contiguous or covered != list(range(data_size)):
        raise ValueError(
            f"The mesh {dict(mesh.shape)} gives processes data rows {sorted(sets)}; each process "
            "must hold a contiguous block of rows that is either shared whole or not at all. "
            "Use a NUM_PARTITIONS that divides or is a multiple of the devices per process."
        )
    if len({len(s) for s in sets}) != 1:
        raise ValueError(
            f"The mesh {dict(mesh.shape)} gives processes unequal numbers of data rows "
            f"{sorted(sets)}; give every process the same number of devices."
        )
    mine = tuple(sorted(rows[process_index]))
    shard_id = sets.index(mine)
    first = min(p for p, r in rows.items() if tuple(sorted(r)) == mine)
    return DataLayout(
        batch_size=batch_size * len(mine) // data_size,
        shard_id=shard_id,
        num_shards=len(sets),
        is_first_host_in_replica_set=process_index == first,
    )
