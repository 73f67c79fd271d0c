"""Host memory while loading a frozen T5: sharded over processes vs one process holding it all.

    python tools/benchmark_loading.py --size base --format t5x --processes 2 --devices 4

Writes a random T5 1.1 checkpoint of the given size and format once (float32), then loads it with
`t5.sharded_loading.load_checkpoint_sharded` (the trainer's loader) in fresh processes:

- "sharded": `--processes` processes x `--devices` CPU devices on one ("data", "model") mesh with
  the model axis over all of them (NUM_PARTITIONS = processes x devices), as a multi-host run
  loads XXL: each process reads only its devices' slices;
- "one device": a single process with one device, which must hold the whole model.

It prints one JSON line per process: bytes read, the RSS before loading and its peak while loading
(sampled every 5 ms), and the loaded model's size; then a summary. On CPU, "device" memory is host
memory, so the peak counts the loaded shards too.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from typing import Any

GiB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """Loads the checkpoint on this process's mesh; returns the stats (worker side)."""
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


def _launch(path: str, size: str, processes: int, devices: int) -> list[dict[str, Any]]:
    """Runs the loading worker in `processes` fresh processes of `devices` CPU devices each."""
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
    worker = [sys.executable, os.path.abspath(__file__), "--worker", path, "--size", size]
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--format", choices=["t5x", "hf", "orbax"], default="t5x")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--checkpoint", help="reuse this checkpoint instead of writing one")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--partitions", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    if args.worker:
        from prompt_tuning.parallel import distributed  # noqa: PLC0415

        distributed.initialize(args.coordinator, args.count, args.index)
        print(json.dumps(load(args.worker, args.size, args.partitions)), flush=True)
        return {}
    path = args.checkpoint
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), f"{args.size}_{args.format}")
        write_checkpoint(args.size, args.format, path)
    sharded = _launch(path, args.size, args.processes, args.devices)
    whole = _launch(path, args.size, 1, 1)
    for result in sharded + whole:
        print(json.dumps(result))
    summary = {
        "model_gib": whole[0]["model_gib"],
        "sharded_rss_growth_gib": [r["rss_growth_gib"] for r in sharded],
        "sharded_read_gib": [r["read_gib"] for r in sharded],
        "one_device_rss_growth_gib": whole[0]["rss_growth_gib"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
