"""Setting a training run up on the mesh: checks, parameters, optimizer state, jitted step, resume.

`setup_run` does, in this order: build the `("data", "model")` mesh (NUM_PARTITIONS or T5X's
`model_parallel_submesh`, every process's devices); check that the model's heads and the batch
split over it (each failure names the number and the fix, before anything is loaded); compute
the data layout; load or initialize the parameters on the mesh (`params.initial_params`); create
the optimizer state and the jitted step; and restore MODEL_DIR's latest checkpoint when there is
one, checking that it belongs to the same run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.model_dir import ModelDir
from prompt_tuning.parallel import distributed, partitioning
from prompt_tuning.train import checkpoints, optimizers, params, step
from prompt_tuning.train import logging as train_logging
from prompt_tuning.train.model import PromptModel


@dataclasses.dataclass
class Run:
    """Everything the training loop needs once set up.

    Attributes:
      model: the `PromptModel`.
      mesh: the device mesh.
      layout: this process's `distributed.DataLayout`.
      state: the `step.TrainState` (global arrays).
      frozen: the frozen parameters (global arrays, never gathered).
      step_fn: the jitted `step.train_step`.
      rng: the base PRNG key of dropout.
      start_step: the step restored from MODEL_DIR (`first_step` for a new run).
      checkpointer: the run's `checkpoints.TrainCheckpointer`.
      logger: the run's `train_logging.MetricsLogger` (writes on the primary process only).
      meta: the run's identity, saved with every checkpoint.
      first_step: the initial checkpoint's step, where TRAIN_STEPS counts from (`steps`).
    """

    model: PromptModel
    mesh: jax.sharding.Mesh
    layout: distributed.DataLayout
    state: step.TrainState
    frozen: Any
    step_fn: Callable[..., Any]
    rng: jax.Array
    start_step: int
    checkpointer: checkpoints.TrainCheckpointer
    logger: train_logging.MetricsLogger
    meta: dict[str, Any]
    first_step: int = 0


def abstract(tree: Any) -> Any:
    """`ShapeDtypeStruct`s (with shardings) of the arrays in `tree`, for orbax restores."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def build_mesh(model: nn.Module, batch_size: int, options: Mapping[str, Any]) -> jax.sharding.Mesh:
    """The run's mesh, after checking that the model and the batch split over it.

    Raises:
      ValueError: NUM_PARTITIONS does not divide the devices or the heads, or BATCH_SIZE does not
        divide over the data axis (each message names the number and the fix).
    """
    num_devices = options.get("num_devices")
    devices = jax.devices()[:num_devices] if num_devices else None
    mesh = partitioning.make_mesh(
        options.get("num_partitions", 1), devices, options.get("model_parallel_submesh")
    )
    partitioning.check_model_fits_mesh(model.config, mesh)
    partitioning.check_batch_fits_mesh(batch_size, mesh)
    return mesh


def initial_state(
    model: PromptModel,
    mesh: jax.sharding.Mesh,
    optimizer: optax.GradientTransformation,
    init_rng: jax.Array,
    task_feature_lengths: Mapping[str, int],
    options: Mapping[str, Any],
    log: Any,
) -> tuple[step.TrainState, Any]:
    """The `TrainState` at the initial checkpoint's step (T5X's) and the frozen parameters, on
    the mesh; the optimizer's step counters (schedule, Adafactor decay) start there too."""
    trainable, frozen = params.initial_params(
        model,
        mesh,
        init_rng,
        task_feature_lengths,
        options["initial_checkpoint_path"],
        options["trainable_params_regex"],
        options["frozen_dtype"],
        options["prompt_file"],
        log=log,
    )
    opt_sharding = partitioning.opt_state_shardings(optimizer, trainable, mesh)
    first_step = options.get("first_step", 0)
    init_opt = lambda p: optimizers.start_at_step(optimizer.init(p), first_step)  # noqa: E731
    opt_state = jax.jit(init_opt, out_shardings=opt_sharding)(trainable)
    count = jax.jit(
        lambda: jnp.asarray(first_step, jnp.int32), out_shardings=partitioning.replicated(mesh)
    )
    return step.TrainState(count(), trainable, opt_state), frozen


def restore(run: Run, model_dir: str) -> Run:
    """Restores MODEL_DIR's newest intact checkpoint into `run` (when there is one).

    A damaged newest checkpoint is named in the log and an older intact one (KEEP >= 2) is
    restored instead (`checkpoints.TrainCheckpointer.restore_newest_intact`); the run never
    starts again from the initial checkpoint over a MODEL_DIR that holds one.

    Raises:
      CheckpointMismatchError: the checkpoint holds another model, prompt or optimizer (both
        shapes of every differing array).
      DamagedCheckpointError: no kept checkpoint reads back whole (each folder and its problem).
      ValueError: the checkpoint holds a run with another seed, task or batch size, or MODEL_DIR
        holds exported prompts but no checkpoint.
    """
    found = run.checkpointer.restore_newest_intact(abstract(run.state), run.logger.message)
    if found is None:
        _check_no_lost_run(model_dir, run.first_step)
        return run
    _, state, saved_meta = found
    for key in ("seed", "task", "batch_size"):
        if saved_meta.get(key) != run.meta[key]:
            raise ValueError(
                f"MODEL_DIR {model_dir} holds a run with {key}={saved_meta.get(key)!r}, but "
                f"this run has {key}={run.meta[key]!r}; use a new MODEL_DIR or the same settings."
            )
    run.state = state
    run.start_step = int(saved_meta["step"])
    return run


def _check_no_lost_run(model_dir: str, first_step: int) -> None:
    """Refuses to start again over prompt exports of a run whose checkpoints are gone.

    Raises:
      ValueError: MODEL_DIR/prompts holds `step_<N>` exports beyond the initial step but
        MODEL_DIR/checkpoints holds no checkpoint.
    """
    layout = ModelDir(model_dir)
    exported = layout.exported_steps()
    if any(step > first_step for step in exported):
        raise ValueError(
            f"MODEL_DIR {model_dir} holds prompts of a run up to step {max(exported)} "
            f"({layout.prompts}) but no checkpoint in {layout.checkpoints()}:"
            " starting again here would mix two runs. Use another MODEL_DIR, or move prompts/ "
            "aside to start again in this one."
        )


def setup_run(
    module: nn.Module,
    model_dir: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    optimizer: optax.GradientTransformation,
    options: Mapping[str, Any],
) -> Run:
    """Builds the mesh, parameters, optimizer state and jitted step; restores the latest checkpoint.

    Args:
      module: the `t5.EncoderDecoder` with its prompt (MODEL).
      model_dir: MODEL_DIR.
      task_feature_lengths: TASK_FEATURE_LENGTHS.
      train_steps: TRAIN_STEPS.
      batch_size: BATCH_SIZE (global).
      optimizer: the optax transformation.
      options: the remaining `trainer.train` settings.

    Returns:
      The `Run`.

    Raises:
      ValueError: the mesh, heads or batch do not fit (before any parameter is loaded), or
        MODEL_DIR holds another run.
    """
    model = PromptModel(module, **options["loss"])
    mesh = build_mesh(model, batch_size, options)
    # Adafactor factors each second moment as the parameter's logical axes say (T5X's
    # `set_param_axes`): never for prompt axes.
    optimizer = optimizers.with_param_axes(optimizer, model.param_logical_axes())
    layout = distributed.data_layout(mesh, batch_size)
    logger = train_logging.MetricsLogger(
        model_dir, train_steps, batch_size, enabled=distributed.is_primary()
    )
    init_rng, step_rng = params.run_keys(options["random_seed"])
    state, frozen = initial_state(
        model, mesh, optimizer, init_rng, task_feature_lengths, options, logger.message
    )
    state_sh = partitioning.shardings_of(state)
    frozen_sh = partitioning.shardings_of(frozen)
    step_fn = step.jit_train_step(model, optimizer, mesh, state_sh, frozen_sh)
    meta = {"seed": options["random_seed"], "task": options["task"], "batch_size": batch_size}
    checkpointer = checkpoints.TrainCheckpointer(model_dir, options["keep"])
    first_step = options.get("first_step", 0)
    run = Run(
        model, mesh, layout, state, frozen, step_fn, step_rng, first_step, checkpointer, logger,
        meta, first_step,
    )  # fmt: skip
    return restore(run, model_dir)
