"""Setting a training run up: the built run, its logger and checkpointer, and resume.

`setup_run` builds the run's plan (`builder.build_run(..., abstract=True)`: the
`("data", "model")` mesh, checked against the heads and the batch before anything is loaded or
written, and the jitted step), then the logger, the parameters and optimizer state
(`builder.materialise`), the data layout and the checkpointer; and restores MODEL_DIR's latest
checkpoint when there is one, checking that it belongs to the same run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from prompt_tuning.model_dir import ModelDir
from prompt_tuning.parallel import distributed
from prompt_tuning.train import builder, checkpoints
from prompt_tuning.train import logging as train_logging


@dataclasses.dataclass
class Run(builder.Run):
    """A built run (`builder.Run`: config, model, mesh, optimizer, state, frozen, step_fn, rng)
    with what the training loop adds.

    Attributes:
      layout: this process's `distributed.DataLayout`.
      start_step: the step restored from MODEL_DIR (`config.first_step` for a new run).
      checkpointer: the run's `checkpoints.TrainCheckpointer`.
      logger: the run's `train_logging.MetricsLogger` (writes on the primary process only).
    """

    layout: distributed.DataLayout
    start_step: int
    checkpointer: checkpoints.TrainCheckpointer
    logger: train_logging.MetricsLogger


def abstract(tree: Any) -> Any:
    """`ShapeDtypeStruct`s (with shardings) of the arrays in `tree`, for orbax restores."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


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
        _check_no_lost_run(model_dir, run.config.first_step)
        return run
    _, state, saved_meta = found
    for key, value in run.config.identity().items():
        if saved_meta.get(key) != value:
            raise ValueError(
                f"MODEL_DIR {model_dir} holds a run with {key}={saved_meta.get(key)!r}, but "
                f"this run has {key}={value!r}; use a new MODEL_DIR or the same settings."
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


def setup_run(config: builder.RunConfig, train_steps: int, keep: int | None) -> Run:
    """Builds the run (`builder.build_run`), its logger and checkpointer; restores MODEL_DIR's
    latest checkpoint.

    Args:
      config: the run's configuration (`model_dir` set).
      train_steps: TRAIN_STEPS.
      keep: checkpoints kept (KEEP).

    Returns:
      The `Run`.

    Raises:
      ValueError: the mesh, heads or batch do not fit (before any parameter is loaded or any
        file written), or MODEL_DIR holds another run.
    """
    model_dir = str(config.model_dir)
    plan = builder.build_run(config, abstract=True)  # checks the mesh; nothing allocated
    logger = train_logging.MetricsLogger(
        model_dir, train_steps, config.batch_size, enabled=distributed.is_primary()
    )
    built = builder.materialise(plan, logger.message)
    run = Run(
        **{field.name: getattr(built, field.name) for field in dataclasses.fields(builder.Run)},
        layout=distributed.data_layout(built.mesh, config.batch_size),
        start_step=config.first_step,
        checkpointer=checkpoints.TrainCheckpointer(model_dir, keep),
        logger=logger,
    )
    return restore(run, model_dir)
