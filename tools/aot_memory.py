"""Does a frozen T5 fit? Per-device memory of the real train step and decode step, compiled AOT.

    python tools/aot_memory.py --sizes xxl --devices 32 --partitions 8 16 --remat none full
    python tools/aot_memory.py --sizes large xl xxl --devices 8 32 128 --output docs/scaling.json
    python tools/aot_memory.py --table run1.log run2.json   # one table from earlier runs' output

For every size, device count, model-axis size, remat policy and activation dtype it compiles the
training step (`prompt_tuning.train.step`, the trainer's program) and one cached decode step on
a mesh of fake CPU devices, from abstract parameters (nothing is allocated), and prints one JSON
line per program: per-device arguments, temporaries, outputs and their total (GiB) and the compile
time, then a Markdown table marking what fits 16 GiB (a TPU v3 core) and 32 GiB (a v4 chip's
core pair as one device). Each device count runs in its own subprocess, started with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`.

Defaults are Lester et al.'s setting: batch 32, 512 input tokens + a 100-token prompt, 16
targets, dropout 0.1, bfloat16 frozen weights, Adafactor. Compiling XXL for a 32-device mesh takes
minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

GiB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One spec per (size, devices, partitions, remat, activation dtype, program)."""
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


def _worker(specs: list[dict[str, Any]]) -> None:
    for spec in specs:
        print(json.dumps(run_spec(spec)), flush=True)


def _run_device_count(devices: int, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs the specs of one device count in a subprocess with that many fake CPU devices."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(specs)]
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


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["large", "xl", "xxl"])
    parser.add_argument("--devices", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--partitions", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--remat", nargs="+", default=["none", "full"])
    parser.add_argument("--activation-dtype", nargs="+", default=["float32"])
    parser.add_argument("--frozen-dtype", default="bfloat16")
    parser.add_argument("--programs", nargs="+", default=["train", "decode"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=100)
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--xla",
        choices=["simulate", "default"],
        default="simulate",
        help="'simulate': XLA:CPU with the memory-optimised scheduler and without its all-reduce "
        "combiner (prompt_tuning.perf.aot.SIMULATION_OPTIONS); 'default': XLA:CPU as it is "
        "(its default scheduler, also for remat steps: aot.CPU_DEFAULT_OPTIONS)",
    )
    parser.add_argument(
        "--activation-partitioning-dims",
        type=int,
        choices=[1, 2],
        default=2,
        help="T5X's: 2 also splits activations' H over the model axis (the default here)",
    )
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument(
        "--table",
        nargs="+",
        metavar="FILE",
        help="compile nothing: print the table of earlier runs' --output files or printed lines",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return []
    if args.table:
        results = read_results(args.table)
        print(markdown_table(results))
        return results
    sys.path.insert(0, ROOT)
    specs = _configs(args)
    results = []
    for devices in args.devices:
        mine = [s for s in specs if s["devices"] == devices]
        if mine:
            results += _run_device_count(devices, mine)
    print(markdown_table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
