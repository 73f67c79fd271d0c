"""Proof of fit by simulation: compile the real train step and a decode step ahead of time.

Everything is abstract (`jax.ShapeDtypeStruct`s with the run's shardings): nothing is allocated,
so a T5-XXL step can be compiled for a mesh of fake CPU devices
(`--xla_force_host_platform_device_count`) and XLA's `compiled.memory_analysis()` gives what one
device needs: its arguments (frozen shard + trainable state + batch shard), temporaries and
outputs. The program is the trainer's (`builder.build_run(config, abstract=True)`: the same
optimizer, shardings and `step.jit_train_step` with the logical activation constraints) and the
decoder's (`decoding.decode_step` under the same rules).

Two XLA:CPU habits would make the simulation report what no TPU run needs, so `SIMULATION_OPTIONS`
turns them off (pass `CPU_DEFAULT_OPTIONS` for XLA:CPU's defaults): its default scheduler
maximises concurrency and keeps temporaries alive together that a TPU/GPU scheduler (working under
a memory limit) serialises, and its all-reduce combiner merges a step's all-reduces into one
tuple all-reduce, holding every operand at once (on CPU the partial sums of the model axis are
all-reduced whole; TPUs reduce-scatter them, under a byte threshold).

Letters: B batch, T input length, P prompt length, S target length, H model dim, N heads, K head
dim.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.parallel import partitioning
from prompt_tuning.t5 import decoding, sharding
from prompt_tuning.train import builder, params, step
from prompt_tuning.train.model import PromptModel

GiB = 2**30
SIMULATION_OPTIONS = {
    **step.CPU_REMAT_OPTIONS,
    "xla_disable_hlo_passes": "cpu-all-reduce-combiner",
}
# XLA:CPU's own choices, also for a remat step (whose jit otherwise asks for CPU_REMAT_OPTIONS).
CPU_DEFAULT_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"}


@dataclasses.dataclass
class MemoryReport:
    """Per-device memory of one compiled program.

    Attributes:
      program: "train" or "decode".
      mesh: the mesh shape, e.g. {"data": 4, "model": 8}.
      argument_bytes: inputs held on the device (parameter shards, state, batch shard).
      temp_bytes: temporaries XLA allocates while running.
      output_bytes: outputs (donated state aliases its input and is not counted twice).
      alias_bytes: outputs that reuse an input buffer.
      compile_seconds: lowering + compilation time.
    """

    program: str
    mesh: dict[str, int]
    argument_bytes: int
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        """Peak per-device need: arguments + temporaries + outputs not aliased to inputs."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields plus `total_bytes`."""
        return dict(dataclasses.asdict(self), total_bytes=self.total_bytes)


def _measure(program: str, mesh: Any, lowered: Any, options: Any, start: float) -> MemoryReport:
    compiled = lowered.compile(compiler_options=options)
    analysis = compiled.memory_analysis()
    return MemoryReport(
        program,
        {k: int(v) for k, v in mesh.shape.items()},
        int(analysis.argument_size_in_bytes),
        int(analysis.temp_size_in_bytes),
        int(analysis.output_size_in_bytes),
        int(analysis.alias_size_in_bytes),
        time.perf_counter() - start,
    )


def train_step_memory(
    config: builder.RunConfig,
    compiler_options: Mapping[str, str] | None = SIMULATION_OPTIONS,
) -> MemoryReport:
    """Compiles the trainer's step for `config`'s mesh from its abstract run and reports memory.

    The program is the trainer's: `builder.build_run(config, abstract=True)` builds the same
    model, optimizer (with the parameters' logical axes), shardings and jitted step as a real run
    of `config`, from shape structs.

    Args:
      config: the run (its `mesh` settings say the mesh over the (fake) devices, its
        `model.config` the dtype and remat_policy; `optimizer` None: Lester et al.'s Adafactor).
      compiler_options: XLA options (default `SIMULATION_OPTIONS`); None compiles with the
        trainer's options (`step.compiler_options`), `CPU_DEFAULT_OPTIONS` with XLA:CPU's.

    Returns:
      The `MemoryReport` of one device.
    """
    start = time.perf_counter()
    run = builder.build_run(config, abstract=True)
    options = dict(compiler_options) if compiler_options else None
    return _measure("train", run.mesh, run.lower(), options, start)


def _logical_struct(shape: tuple[int, ...], dtype: Any, names: Any, mesh: Any, rules: Any) -> Any:
    spec = sharding.logical_to_mesh_spec(names, shape, dict(mesh.shape), rules, strict=False)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.NamedSharding(mesh, spec))


def decode_step_memory(
    model: PromptModel,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    lengths: Mapping[str, int],
    prompt_length: int,
    frozen_dtype: Any = None,
    compiler_options: Mapping[str, str] | None = SIMULATION_OPTIONS,
    rules: partitioning.Rules | None = None,
) -> MemoryReport:
    """Compiles one cached decoding step (`decoding.decode_step`) for `mesh` and reports memory.

    The encoder output `[B, P+T, H]` and the cache (`[B, S, N, K]` self-attention keys/values,
    `[B, P+T, N, K]` cross-attention ones) are inputs, sharded like the activations.
    """
    start = time.perf_counter()
    boxed = params.abstract_params(model, lengths)
    shardings = partitioning.params_shardings(boxed, mesh)
    full = builder.shaped(nn.unbox(boxed), shardings, frozen_dtype)
    rules = rules or partitioning.standard_logical_axis_rules()
    config = model.config
    b, t, s = batch_size, lengths["inputs"] + prompt_length, lengths["targets"]
    dtype = config.dtype
    hidden = ("batch", "length", "embed")
    encoded = _logical_struct((b, t, config.emb_dim), dtype, hidden, mesh, rules)
    mask = _logical_struct((b, t), jnp.bool_, ("batch", "length"), mesh, rules)
    cache = jax.eval_shape(
        lambda p, e, m: decoding.init_cache(model.module, p, e, m, s), full, encoded, mask
    )
    heads = ("batch", "length", "heads", "kv")
    cache = jax.tree.map(
        lambda x: _logical_struct(x.shape, x.dtype, heads if x.ndim == 4 else None, mesh, rules),
        cache,
    )
    tokens = _logical_struct((b,), jnp.int32, ("batch",), mesh, rules)
    fn = partitioning.on_mesh(
        lambda p, c, e, m, x: decoding.decode_step(model.module, p, c, e, m, x), mesh, rules
    )
    lowered = jax.jit(fn, donate_argnums=(1,)).lower(full, cache, encoded, mask, tokens)
    options = dict(compiler_options) if compiler_options else None
    return _measure("decode", mesh, lowered, options, start)
