"""Guards of the private JAX modules `parallel/distributed.py` reads (see its docstring).

JAX 0.10.2 offers no public way to ask whether this host is a Cloud TPU VM before joining, nor to
reach the coordinator's key-value store; if these fail, JAX moved what the module reads (each
message names it), or a public replacement may exist.
"""

import jax
import pytest

from prompt_tuning.parallel import distributed


def test_cloud_tpu_detection_is_where_distributed_reads_it():
    try:
        from jax._src.clusters import cloud_tpu_cluster  # noqa: PLC0415
    except ImportError:
        pytest.fail("jax._src.clusters.cloud_tpu_cluster is gone: update distributed._cloud_tpu")
    assert hasattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm"), (
        "jax._src.clusters.cloud_tpu_cluster.running_in_cloud_tpu_vm is gone: Cloud TPU hosts no "
        "longer join without flags; update prompt_tuning/parallel/distributed.py::_cloud_tpu."
    )
    for name in ("GceTpuCluster", "GkeTpuCluster"):
        cluster = getattr(cloud_tpu_cluster, name, None)
        assert callable(getattr(cluster, "is_env_present", None)), (
            f"jax._src.clusters.cloud_tpu_cluster.{name}.is_env_present is gone: update "
            "prompt_tuning/parallel/distributed.py::_cloud_tpu."
        )
    assert distributed._cloud_tpu() is False  # this test machine is no TPU VM


def test_the_coordinator_client_is_where_the_watchdog_reads_it():
    from jax._src import distributed as jax_distributed  # noqa: PLC0415

    state = getattr(jax_distributed, "global_state", None)
    assert state is not None and hasattr(state, "client"), (
        "jax._src.distributed.global_state.client is gone: the lost-process watchdog cannot "
        "start; update prompt_tuning/parallel/distributed.py::_start_watchdog."
    )
    public = {n for n in dir(jax.distributed) if not n.startswith("_")}
    assert public == {"initialize", "is_initialized", "shutdown"}, (
        f"jax.distributed now offers {sorted(public)}: check for a public client or cluster "
        "detection to use in prompt_tuning/parallel/distributed.py."
    )
