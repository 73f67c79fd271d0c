"""The training step: one update of the trainable parameters, K scanned, and the step on the mesh.

`train_step(state, frozen, batch, rng)` differentiates the loss with respect to the trainable
parameters only; the frozen ones are closed over, so they carry no gradient buffers and no
optimizer state. `jit_train_step` compiles it with explicit shardings, donated state and the
model's logical activation constraints active (`partitioning.on_mesh`), so the program the
trainer runs is the program `tools/aot_memory.py` measures; `run_steps` scans K steps (tools
jit a whole run with it, tools/compare_methods.py).

Letters: B batch, T input length, S target length.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.parallel import partitioning
from prompt_tuning.train import optimizers
from prompt_tuning.train.model import PromptModel

# XLA:CPU's default scheduler maximises concurrency: it runs the backward pass's rematerialised
# forward computations as early as it can, so their activations are live as long as without
# remat and `remat_policy` saves nothing. The memory-optimised scheduler keeps them where they
# belong (what TPU/GPU schedulers do under their memory limit).
CPU_REMAT_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
# XLA:CPU's YNNPACK library fusions by default also take in the elementwise ops around a dot (the
# MLP activation, norms, the softmax and their gradients). With a narrow MLP (T5 1.1 small,
# mlp_dim 1024) YNNPACK runs those slower than XLA's own loop fusions: with dots alone the
# mixed-precision step at batch 32 takes 1.75 s instead of 2.03 s, float32 3.5 s instead of
# 3.7 s (batch 8 and 16 unchanged). With base's 2048-wide MLP it is the other way round (batch 8:
# 1.45 s with XLA's default, 1.57 s with dots alone), so the option applies to the width where it
# was measured faster. The tiny models keep XLA's default: their steps are too small for it to
# matter, and with dots alone a tiny model trained on 2 x 4 devices drifted 3e-4 from the same run
# on 8 devices of one process within 3 steps (1e-5 with XLA's default; not understood).
DOTS_ONLY_MLP_DIMS = (1024,)
CPU_DOTS_ONLY_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}


@flax.struct.dataclass
class TrainState:
    """What changes during training (and is checkpointed).

    Attributes:
      step: updates applied so far (int32 scalar).
      params: the trainable parameters (nested dict).
      opt_state: the optimizer state of the trainable parameters only.
    """

    step: jax.Array
    params: Any
    opt_state: Any


def init_state(
    optimizer: optax.GradientTransformation, trainable: Any, first_step: int = 0
) -> TrainState:
    """A fresh `TrainState` of `trainable` at `first_step` (the initial checkpoint's step): the
    optimizer's initial state with T5X's step counters there (`optimizers.start_at_step`)."""
    opt_state = optimizer.init(trainable)
    if first_step:
        opt_state = optimizers.start_at_step(opt_state, first_step)
    return TrainState(jnp.asarray(first_step, jnp.int32), trainable, opt_state)


def train_step(
    state: TrainState,
    frozen: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: PromptModel,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update of the trainable parameters (pure; jitted once by `train`).

    Gradients are taken with respect to `state.params` only; `frozen` is closed over, so frozen
    weights get no gradient buffers and no optimizer state.

    Args:
      state: the current `TrainState`.
      frozen: frozen parameters (nested dict; never updated).
      batch: a converted batch ([B, T] / [B, S] arrays).
      rng: the run's base PRNG key; dropout uses `fold_in(rng, step)`, so a resumed run draws the
        same dropout masks as an uninterrupted one.
      model: the `PromptModel` (static).
      optimizer: the optax transformation (static).

    Returns:
      (new state, metrics): `loss`, `z_loss`, `cross_ent_loss`, `accuracy`, `num_tokens`,
      `grad_norm`, `param_norm` (of the updated trainable parameters), `learning_rate`.
    """
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_of(trainable: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        return model.loss_fn(optimizers.merge_params(trainable, frozen), batch, dropout_rng)

    (_, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(aux, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params))
    rate = optimizers.current_learning_rate(opt_state)
    if rate is not None:
        metrics["learning_rate"] = rate
    return TrainState(state.step + 1, params, opt_state), metrics


def run_steps(
    state: TrainState,
    frozen: Any,
    batches: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: PromptModel,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """K `train_step`s in one `jax.lax.scan`, over batches stacked as `[K, B, ...]`.

    Jitted whole (with the learning rate a traced input of the optimizer), one compilation serves
    a whole run of any seed and rate; the K steps equal K calls of `train_step`.

    Returns:
      (state after K steps, metrics stacked as `[K]` per key).
    """

    def body(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Any]:
        return train_step(state, frozen, batch, rng, model=model, optimizer=optimizer)

    return jax.lax.scan(body, state, batches)


def compiler_options(model: PromptModel, mesh: jax.sharding.Mesh) -> dict[str, str] | None:
    """XLA options for the step: on CPU, YNNPACK fusions of dots alone for MLPs of the widths in
    `DOTS_ONLY_MLP_DIMS` and, with remat, the memory-optimised scheduler; None (XLA's defaults)
    otherwise."""
    if mesh.devices.flat[0].platform != "cpu":
        return None
    options = {}
    if model.config.mlp_dim in DOTS_ONLY_MLP_DIMS:
        options |= CPU_DOTS_ONLY_OPTIONS
    if model.config.remat_policy != "none":
        options |= CPU_REMAT_OPTIONS
    return options or None


def jit_train_step(
    model: PromptModel,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    state_shardings: Any,
    frozen_shardings: Any,
    rules: partitioning.Rules | None = None,
    donate: bool = True,
) -> Any:
    """`train_step` jitted on `mesh`: explicit shardings, donated state, activation constraints.

    Args:
      model: the `PromptModel`.
      optimizer: the optax transformation.
      mesh: the device mesh.
      state_shardings: shardings of the `TrainState`.
      frozen_shardings: shardings of the frozen parameters.
      rules: logical axis rules (default `partitioning.standard_logical_axis_rules()`).
      donate: donate the state (the trainer's choice; the benchmark's `--no-donate` turns it off).

    Returns:
      `step(state, frozen, batch, rng) -> (state, metrics)`; metrics are replicated.
    """
    fn = functools.partial(train_step, model=model, optimizer=optimizer)
    return jax.jit(
        partitioning.on_mesh(fn, mesh, rules),
        in_shardings=(
            state_shardings,
            frozen_shardings,
            partitioning.data_sharding(mesh),
            partitioning.replicated(mesh),
        ),
        out_shardings=(state_shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
        compiler_options=compiler_options(model, mesh),
    )
