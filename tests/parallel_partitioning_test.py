"""Mesh construction, errors before any work, T5X's data layout, optimizer-state shardings."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prompt_tuning.parallel import distributed, partitioning
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.train import gin_utils


def test_optimizer_state_follows_each_parameter_by_path_not_by_shape():
    # Two parameters of one shape with different shardings: each moment must follow its own.
    mesh = partitioning.make_mesh(4)
    split = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P("model", None)))
    replicated = jax.device_put(jnp.ones((8, 4)), partitioning.replicated(mesh))
    trainable = {"a": split, "b": replicated}
    shardings = partitioning.opt_state_shardings(optax.adam(1e-3), trainable, mesh)
    adam = shardings[0]
    for moments in (adam.mu, adam.nu):
        assert moments["a"].spec == P("model", None)
        assert moments["b"].spec == P()
    assert adam.count.spec == P()
    state = jax.jit(optax.adam(1e-3).init, out_shardings=shardings)(trainable)
    assert state[0].mu["b"].sharding.spec == P()


def _fake_tpu(x, y, cores):
    return [
        types.SimpleNamespace(id=i, coords=(i // (y * cores), i // cores % y, 0), core_on_chip=c)
        for i, c in enumerate([c for _ in range(x * y) for c in range(cores)])
    ]


def test_model_parallel_submesh_groups_neighbouring_chips():
    devices = _fake_tpu(2, 2, 2)  # a 2x2 slice, 2 cores per chip: 8 devices
    grid = partitioning._submesh_grid(devices, (1, 2, 1, 2))  # model axis: a column of 2 chips
    assert grid.shape == (2, 4)
    for row in grid:
        assert len({d.coords[0] for d in row}) == 1  # one x per model group
        assert {(d.coords[1], d.core_on_chip) for d in row} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    with pytest.raises(ValueError, match=r"does not tile the slice's.*\(2, 2, 1, 2\)"):
        partitioning._submesh_grid(devices, (1, 3, 1, 1))
    with pytest.raises(ValueError, match="needs TPU devices.*set NUM_PARTITIONS"):
        partitioning.make_mesh(1, model_parallel_submesh=(1, 1, 1, 2))


def test_bad_partitions_heads_and_batches_are_named_with_the_fix():
    with pytest.raises(ValueError, match=r"NUM_PARTITIONS=3 does not divide the 8 devices"):
        partitioning.make_mesh(3)
    mesh = partitioning.make_mesh(8)
    with pytest.raises(
        ValueError, match=r"NUM_PARTITIONS=8 does not divide the model's 6 .*\[1, 2\]"
    ):
        partitioning.check_model_fits_mesh(t5_config.t5_1_1("small"), mesh)
    partitioning.check_model_fits_mesh(t5_config.t5_1_1("large"), mesh)  # 16 heads: fine
    with pytest.raises(ValueError, match=r"BATCH_SIZE 6 is not divisible by .* 4 .*e\.g\. 4 or 8"):
        partitioning.check_batch_fits_mesh(6, partitioning.make_mesh(2))
    # Evaluation pads its batches instead: 6 rows on a data axis of 4 run as 8.
    assert partitioning.evaluation_batch_size(6, partitioning.make_mesh(2)) == 8
    assert partitioning.evaluation_batch_size(8, partitioning.make_mesh(2)) == 8


def _fake_mesh(process_of_device, data, model):
    grid = np.array([types.SimpleNamespace(process_index=p) for p in process_of_device])
    return types.SimpleNamespace(
        shape={"data": data, "model": model}, devices=grid.reshape(data, model)
    )


def test_data_layout_is_t5x_s_replica_sets():
    two_by_four = [0, 0, 0, 0, 1, 1, 1, 1]
    # Model axis inside each process: 2 shards, each process reads its own half of the batch.
    assert distributed.data_layout(_fake_mesh(two_by_four, 4, 2), 32, 1) == (
        distributed.DataLayout(16, 1, 2, True)
    )
    # Model axis across both processes: one replica set, both read the same whole batch.
    spanning = _fake_mesh(two_by_four, 1, 8)
    assert distributed.data_layout(spanning, 32, 0) == distributed.DataLayout(32, 0, 1, True)
    assert distributed.data_layout(spanning, 32, 1) == distributed.DataLayout(32, 0, 1, False)
    # Four processes of two devices, model axis 4: processes pair up into two replica sets.
    four = _fake_mesh([0, 0, 1, 1, 2, 2, 3, 3], 2, 4)
    layouts = [distributed.data_layout(four, 32, p) for p in range(4)]
    assert [(x.shard_id, x.batch_size, x.is_first_host_in_replica_set) for x in layouts] == [
        (0, 16, True),
        (0, 16, False),
        (1, 16, True),
        (1, 16, False),
    ]
    with pytest.raises(ValueError, match="contiguous block of rows"):
        distributed.data_layout(_fake_mesh([0, 0, 0, 1, 1, 1], 3, 2), 6, 0)


def test_process_flags_are_parsed_and_checked_before_joining(monkeypatch):
    flags, rest = gin_utils.split_process_flags(
        ["--gin_file=a.gin", "--coordinator_address", "10.0.0.1:1234", "--process_count=2"]
        + ["--process_index=1", "--multiprocess_gpu"]
    )
    assert rest == ["--gin_file=a.gin"]
    assert flags == dict(
        coordinator_address="10.0.0.1:1234", process_count=2, process_index=1, multiprocess_gpu=True
    )
    with pytest.raises(ValueError, match="--process_count must be an integer"):
        gin_utils.split_process_flags(["--process_count=two"])
    assert distributed.initialize() is False  # one process: nothing to join
    with pytest.raises(ValueError, match=r"--process_index=2 must be in 0 \.\. 1"):
        distributed.initialize("127.0.0.1:1", 2, 2)
    with pytest.raises(ValueError, match="needs --process_count"):
        distributed.initialize("127.0.0.1:1")
    with pytest.raises(ValueError, match="need --coordinator_address"):
        distributed.initialize(process_count=2, process_index=0)
    # The coordinator counts another number of processes than --process_count says.
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: None)
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match="--process_count=2 but the coordinator counts 3"):
        distributed.initialize("127.0.0.1:1", 2, 1)

    def unreachable(*args, **kwargs):
        raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out")

    monkeypatch.setattr(jax.distributed, "initialize", unreachable)
    with pytest.raises(ValueError, match=r"Process 1 could not join .*--process_count \(2\)"):
        distributed.initialize("127.0.0.1:1", 2, 1)
