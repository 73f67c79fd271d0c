"""Host memory while loading a frozen T5: sharded over processes vs one process holding it all.

The logic of `tools/benchmark_loading.py` (its docstring describes the measurement):
`write_checkpoint` writes a random checkpoint, `launch` loads it in fresh worker processes (this
module's `main`, each calling `load`), `compare` runs the sharded and the one-device loads.
jax is imported only inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

GiB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_checkpoint(size: str, kind: str, path: str) -> None:
    """A random float32 T5 1.1 checkpoint of `size` in format `kind` at `path`."""
    import numpy as np  # noqa: PLC0415

    from prompt_tuning.t5 import checkpoint_tree, checkpoints  # noqa: PLC0415
    from prompt_tuning.t5 import config as t5_config  # noqa: PLC0415

    config = t5_config.t5_1_1(size)
    rng = np.random.default_rng(0)
    shapes = checkpoints.expected_shapes(config)
    flat = {n: rng.standard_normal(s, dtype=np.float32) * 0.05 for n, s in shapes.items()}
    params = checkpoint_tree.unflatten(flat)
    if kind == "t5x":
        checkpoints.save_t5x_checkpoint(params, path)
    elif kind == "hf":
        checkpoints.save_hf_checkpoint(params, config, path)
    else:
        import orbax.checkpoint as ocp  # noqa: PLC0415

        ocp.PyTreeCheckpointer().save(os.path.abspath(path), {"target": params})


def load(path: str, size: str, partitions: int) -> dict[str, Any]:
    """Loads the checkpoint on this process's mesh; returns the stats (worker side).

    Args:
      path: the checkpoint (any format `sharded_loading.load_checkpoint_sharded` reads).
      size: its T5 1.1 size.
      partitions: the mesh's model-axis size.

    Returns:
      JSON-able: process index and count, devices, mesh, checkpoint kind, the model's GiB, the
      GiB read by this process, its RSS at the start and peak (GiB), their difference, seconds.
    """
    import jax  # noqa: PLC0415

    from prompt_tuning.parallel import partitioning  # noqa: PLC0415
    from prompt_tuning.t5 import checkpoint_tree, network, sharded_loading  # noqa: PLC0415
    from prompt_tuning.t5 import config as t5_config  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    config = t5_config.t5_1_1(size)
    model = PromptModel(network.EncoderDecoder(config))
    mesh = partitioning.make_mesh(partitions)
    boxed = jax.eval_shape(lambda: model.init_boxed(jax.random.key(0), 8, 4))
    shardings = checkpoint_tree.flatten(partitioning.params_shardings(boxed, mesh))
    _, _, stats = sharded_loading.load_checkpoint_sharded(path, shardings, config)
    return dict(
        process=jax.process_index(),
        processes=jax.process_count(),
        devices=jax.device_count(),
        mesh=dict(mesh.shape),
        kind=stats.kind,
        model_gib=stats.global_bytes / GiB,
        read_gib=stats.bytes_read / GiB,
        rss_start_gib=stats.rss_start / GiB,
        rss_peak_gib=stats.rss_peak / GiB,
        rss_growth_gib=(stats.rss_peak - stats.rss_start) / GiB,
        seconds=stats.seconds,
    )


def launch(path: str, size: str, processes: int, devices: int) -> list[dict[str, Any]]:
    """Runs the loading worker in `processes` fresh processes of `devices` CPU devices each.

    The processes form one distributed run (a coordinator on a free loopback port) when
    `processes` > 1, on a mesh whose model axis spans all `processes * devices` devices.

    Returns:
      Each process's `load` result, in process order.

    Raises:
      RuntimeError: a worker failed.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    worker = [sys.executable, "-m", "prompt_tuning.perf.loading", path, "--size", size]
    worker += ["--partitions", str(processes * devices)]
    procs = []
    for i in range(processes):
        flags = []
        if processes > 1:
            flags = [f"--coordinator=127.0.0.1:{port}", f"--count={processes}", f"--index={i}"]
        procs.append(subprocess.Popen(worker + flags, env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"A loading worker failed (exit {proc.returncode}).")
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return results


def compare(
    path: str, size: str, processes: int, devices: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Loads `path` sharded (`processes` x `devices`) and on one device; sums the two up.

    Returns:
      (the sharded processes' results, the one-device result as a list, the summary: the
      model's GiB, each sharded process's RSS growth and bytes read, the one device's growth).
    """
    sharded = launch(path, size, processes, devices)
    whole = launch(path, size, 1, 1)
    summary = {
        "model_gib": whole[0]["model_gib"],
        "sharded_rss_growth_gib": [r["rss_growth_gib"] for r in sharded],
        "sharded_read_gib": [r["read_gib"] for r in sharded],
        "one_device_rss_growth_gib": whole[0]["rss_growth_gib"],
    }
    return sharded, whole, summary


def main(argv: Sequence[str] | None = None) -> None:
    """The worker: `python -m prompt_tuning.perf.loading PATH --size S --partitions N
    [--coordinator HOST:PORT --count C --index I]` prints `load`'s JSON line."""
    parser = argparse.ArgumentParser(description="One process of `launch`.")
    parser.add_argument("path")
    parser.add_argument("--size", required=True)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--coordinator")
    parser.add_argument("--count", type=int)
    parser.add_argument("--index", type=int)
    args = parser.parse_args(argv)
    from prompt_tuning.parallel import distributed  # noqa: PLC0415

    distributed.initialize(args.coordinator, args.count, args.index)
    print(json.dumps(load(args.path, args.size, args.partitions)), flush=True)


if __name__ == "__main__":
    main()
