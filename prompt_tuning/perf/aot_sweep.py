"""Per-device memory of the train and decode steps over a sweep of sizes and meshes (AOT).

The logic of `tools/aot_memory.py` (its docstring describes the sweep and the output):
`sweep_specs` lists the programs to compile, `run_spec` compiles one in this process with
`aot.train_step_memory` / `aot.decode_step_memory`, `run_sweep` runs each device count in its
own subprocess (`XLA_FLAGS=--xla_force_host_platform_device_count=N`, this module's `main`), and
`markdown_table` / `read_results` print and re-read the results. jax is imported only inside
`run_spec`.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

GiB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sweep_specs(args: Any) -> list[dict[str, Any]]:
    """One spec per (size, devices, partitions, remat, activation dtype, program).

    Args:
      args: `tools/aot_memory.py`'s flags as attributes (an `argparse.Namespace`): `sizes`,
        `devices`, `partitions`, `remat`, `activation_dtype`, `programs` (the sweep; a model
        axis that does not divide both the device count and the heads is skipped) and
        `frozen_dtype`, `batch`, `inputs`, `prompt`, `targets`, `dropout`, `xla`,
        `activation_partitioning_dims` (the same for every spec).

    Returns:
      JSON-able specs for `run_spec`.
    """
    from prompt_tuning.t5 import config as t5_config  # noqa: PLC0415

    specs = []
    for size, devices in itertools.product(args.sizes, args.devices):
        heads = t5_config.by_size(size).num_heads
        for parts in args.partitions:
            if devices % parts or heads % parts:
                continue
            for remat, act in itertools.product(args.remat, args.activation_dtype):
                for program in args.programs:
                    if program == "decode" and remat != args.remat[0]:
                        continue  # decoding has no backward pass: remat changes nothing
                    specs.append(
                        dict(
                            size=size,
                            devices=devices,
                            partitions=parts,
                            remat=remat,
                            activation_dtype=act,
                            frozen_dtype=args.frozen_dtype,
                            program=program,
                            batch=args.batch,
                            inputs=args.inputs,
                            prompt=args.prompt,
                            targets=args.targets,
                            dropout=args.dropout,
                            xla=args.xla,
                            activation_partitioning_dims=args.activation_partitioning_dims,
                        )
                    )
    return specs


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Compiles one program in this process (whose device count is the spec's)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from prompt_tuning import prompts  # noqa: PLC0415
    from prompt_tuning.parallel import partitioning  # noqa: PLC0415
    from prompt_tuning.perf import aot  # noqa: PLC0415
    from prompt_tuning.t5 import config as t5_config  # noqa: PLC0415
    from prompt_tuning.t5 import network  # noqa: PLC0415
    from prompt_tuning.train import builder  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    assert jax.device_count() == spec["devices"], jax.device_count()
    config = t5_config.by_size(
        spec["size"],
        dtype=jnp.dtype(spec["activation_dtype"]),
        dropout_rate=spec["dropout"],
        remat_policy=spec["remat"],
    )
    module = network.EncoderDecoder(config, prompt=prompts.Prompt(spec["prompt"]))
    lengths = {"inputs": spec["inputs"], "targets": spec["targets"]}
    frozen_dtype = jnp.dtype(spec["frozen_dtype"])
    options = aot.SIMULATION_OPTIONS if spec["xla"] == "simulate" else aot.CPU_DEFAULT_OPTIONS
    mesh = partitioning.MeshConfig(
        spec["partitions"], activation_partitioning_dims=spec["activation_partitioning_dims"]
    )
    if spec["program"] == "train":
        run = builder.RunConfig(
            module, lengths, spec["batch"], frozen_dtype=frozen_dtype.name, mesh=mesh
        )
        report = aot.train_step_memory(run, options)
    else:
        report = aot.decode_step_memory(
            PromptModel(module),
            mesh.make(),
            spec["batch"],
            lengths,
            spec["prompt"],
            frozen_dtype,
            options,
            mesh.rules(),
        )
    return dict(spec, **report.as_dict())


def main(argv: Sequence[str] | None = None) -> None:
    """The worker: `python -m prompt_tuning.perf.aot_sweep SPECS_JSON` prints one line per spec."""
    (specs,) = sys.argv[1:] if argv is None else argv
    for spec in json.loads(specs):
        print(json.dumps(run_spec(spec)), flush=True)


def run_device_count(devices: int, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs the specs of one device count in a subprocess with that many fake CPU devices."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    command = [sys.executable, "-m", "prompt_tuning.perf.aot_sweep", json.dumps(specs)]
    results = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("{"):
                result = json.loads(line)
                print(line.strip(), flush=True)
                results.append(result)
    if proc.returncode:
        raise RuntimeError(f"The {devices}-device worker failed (exit {proc.returncode}).")
    return results


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """A table of the results: GiB per device and whether it fits 16 / 32 GiB."""
    lines = [
        "| model | devices | mesh (data × model) | program | remat | frozen | activations |"
        " arguments | temporaries | outputs | total | fits 16 GiB | fits 32 GiB | compile |",
        "|---|---:|---|---|---|---|---|---:|---:|---:|---:|:-:|:-:|---:|",
    ]
    for r in results:
        total = r["total_bytes"] / GiB
        mesh = f"{r['mesh']['data']} × {r['mesh']['model']}"
        activations = r["activation_dtype"]
        program = r["program"] + (" (XLA:CPU defaults)" if r.get("xla") == "default" else "")
        remat = r["remat"] if r["program"] == "train" else "–"  # decoding has no backward pass
        if r.get("activation_partitioning_dims", 2) == 1:
            activations += " (1-D)"
        lines.append(
            f"| {r['size']} | {r['devices']} | {mesh} | {program} | {remat} | "
            f"{r['frozen_dtype']} | {activations} | {r['argument_bytes'] / GiB:.2f} | "
            f"{r['temp_bytes'] / GiB:.2f} | "
            f"{max(r['output_bytes'] - r['alias_bytes'], 0) / GiB:.2f} | {total:.2f} | "
            f"{'yes' if total <= 16 else 'no'} | {'yes' if total <= 32 else 'no'} | "
            f"{r['compile_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def read_results(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Results saved by earlier runs: their `--output` JSON files or their printed JSON lines."""
    results = []
    for path in paths:
        with open(path) as f:
            text = f.read()
        if text.lstrip().startswith("["):
            results += json.loads(text)
        else:
            results += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return results


def run_sweep(specs: Sequence[dict[str, Any]], devices: Sequence[int]) -> list[dict[str, Any]]:
    """Runs `specs` (`sweep_specs`), one subprocess per device count, in the order of `devices`.

    Returns:
      One result per spec: the spec and its `aot.MemoryReport.as_dict()`; each is also printed
      as a JSON line when it arrives.
    """
    results = []
    for count in devices:
        mine = [s for s in specs if s["devices"] == count]
        if mine:
            results += run_device_count(count, mine)
    return results


if __name__ == "__main__":
    main()
