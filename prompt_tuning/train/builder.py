"""One way to build a run: a typed `RunConfig` and `build_run`, which turns it into a `Run`.

`build_run` makes, in this order: the `PromptModel` (MODEL with the loss settings); the
`("data", "model")` mesh, after checking that the heads and the batch split over it; the optimizer
as the trainer uses it (`run_optimizer`: Adafactor told each parameter's logical axes, so a prompt's
second moment is never factored); the abstract state and frozen parameters (`jax.ShapeDtypeStruct`s
with their shardings); and `step.jit_train_step` compiled against those shardings. Then, unless
`abstract=True`, it materialises the parameters (`params.initial_params`) and the optimizer state
with exactly the shapes and shardings of that plan.

Every program that trains or measures a training step goes through here, so they all run the same
program: the trainer (`train.setup`), the AOT memory simulation (`perf.aot`,
tools/aot_memory.py: `abstract=True`, nothing allocated), the benchmark (`perf.benchmark`) and
tools/compare_methods.py (`run_optimizer`, inside its jitted whole run).

Letters: B batch, T input length, S target length.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.parallel import partitioning
from prompt_tuning.t5 import precision
from prompt_tuning.train import optimizers, params, step
from prompt_tuning.train.model import PromptModel

BATCH_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The training loss's settings (`PromptModel`'s; the gin names of `trainer.train`).

    Attributes:
      loss_normalizing_factor: LOSS_NORMALIZING_FACTOR (None sums the token losses; see `losses`).
      z_loss: z-loss coefficient.
      label_smoothing: label smoothing.
      distillation: an optional `distillation.PromptDistillation` added to the loss.
    """

    loss_normalizing_factor: float | str | None = None
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    distillation: Any = None

    def model(self, module: nn.Module) -> PromptModel:
        """The `PromptModel` of `module` with this loss."""
        return PromptModel(
            module,
            loss_normalizing_factor=self.loss_normalizing_factor,
            z_loss=self.z_loss,
            label_smoothing=self.label_smoothing,
            distillation=self.distillation,
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run's configuration: what `build_run` needs, and what the tools read from config.gin.

    Field names follow the gin macros of `trainer.train` (in lower case).

    Attributes:
      model: MODEL, the `t5.EncoderDecoder` with its prompt module.
      task_feature_lengths: TASK_FEATURE_LENGTHS `{"inputs": T, "targets": S}` (None: unknown,
        e.g. a config.gin without it; `build_run` needs it).
      batch_size: BATCH_SIZE, global (None: unknown; `build_run` needs it).
      task: MIXTURE_OR_TASK_NAME.
      model_dir: MODEL_DIR (None: a run that writes nothing, e.g. AOT or the benchmark).
      optimizer: the optax transformation (None: Lester et al.'s `optimizers.adafactor()`).
      initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (None: a random frozen model).
      random_seed: RANDOM_SEED (initialization, dropout, data order).
      trainable_params_regex: TRAINABLE_PARAMS_REGEX.
      frozen_dtype: FROZEN_DTYPE (e.g. "bfloat16"; None: as initialized or stored).
      prompt_file: PROMPT_FILE to start the prompt from.
      loss: the loss settings.
      mesh: the mesh settings (NUM_PARTITIONS, ...).
      mixture_or_task_module: MIXTURE_OR_TASK_MODULE.
      first_step: the initial checkpoint's step (`steps.initial_step`), where the optimizer's
        step counters and TRAIN_STEPS start.
    """

    model: nn.Module
    task_feature_lengths: Mapping[str, int] | None = None
    batch_size: int | None = None
    task: str | None = None
    model_dir: str | pathlib.Path | None = None
    optimizer: optax.GradientTransformation | None = None
    initial_checkpoint_path: str | None = None
    random_seed: int = 0
    trainable_params_regex: str = optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX
    frozen_dtype: str | None = None
    prompt_file: str | None = None
    loss: LossConfig = LossConfig()
    mesh: partitioning.MeshConfig = partitioning.MeshConfig()
    mixture_or_task_module: Any = None
    first_step: int = 0

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed by it (saved with each)."""
        return {"seed": self.random_seed, "task": self.task, "batch_size": self.batch_size}


@dataclasses.dataclass
class Run:
    """A built run: model, mesh, optimizer, state, frozen parameters and the jitted step.

    With `build_run(..., abstract=True)` `state`, `frozen` and `rng` are `jax.ShapeDtypeStruct`s
    carrying the same shardings the real arrays get.

    Attributes:
      config: the `RunConfig` it was built from.
      model: the `PromptModel`.
      mesh: the device mesh.
      optimizer: the optimizer as the step applies it (`run_optimizer`).
      state: the `step.TrainState` (global arrays), at step `config.first_step`.
      frozen: the frozen parameters (global arrays, never gathered).
      step_fn: `step.jit_train_step`: `step_fn(state, frozen, batch, rng) -> (state, metrics)`.
      rng: the base PRNG key of dropout (`params.run_keys`).
    """

    config: RunConfig
    model: PromptModel
    mesh: jax.sharding.Mesh
    optimizer: optax.GradientTransformation
    state: step.TrainState
    frozen: Any
    step_fn: Callable[..., Any]
    rng: jax.Array

    @property
    def first_step(self) -> int:
        """The initial checkpoint's step, where TRAIN_STEPS counts from (`steps`)."""
        return self.config.first_step

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch `{feature: [B, T] or [B, S] int32}` as shape structs, data-sharded."""
        return abstract_batch(self.config, self.mesh)

    def lower(self, batch: Any = None) -> Any:
        """The step lowered for this run's state (real or abstract) and `batch` (default:
        `abstract_batch()`): `.compile()` it, or read its HLO."""
        batch = self.abstract_batch() if batch is None else batch
        return self.step_fn.lower(self.state, self.frozen, batch, self.rng)


def run_optimizer(
    model: PromptModel, optimizer: optax.GradientTransformation | None = None
) -> optax.GradientTransformation:
    """The optimizer as every run applies it: Adafactor factors each second moment as the
    parameter's logical axes say (T5X's `set_param_axes`): never for prompt axes.

    Args:
      model: the `PromptModel` (its parameters' logical axes).
      optimizer: the optax transformation (None: `optimizers.adafactor()`).
    """
    optimizer = optimizers.adafactor() if optimizer is None else optimizer
    return optimizers.with_param_axes(optimizer, model.param_logical_axes())


def build_mesh(model: PromptModel, config: RunConfig) -> jax.sharding.Mesh:
    """The run's mesh, after checking that the model and the batch split over it.

    Raises:
      ValueError: NUM_PARTITIONS does not divide the devices or the heads, or BATCH_SIZE does not
        divide over the data axis (each message names the number and the fix).
    """
    mesh = config.mesh.make()
    partitioning.check_model_fits_mesh(model.config, mesh)
    partitioning.check_batch_fits_mesh(config.batch_size, mesh)
    return mesh


def shaped(tree: Any, shardings: Any, dtype: Any = None) -> Any:
    """Shape structs of `tree` with `shardings`; `dtype` (FROZEN_DTYPE) for its matmul weights
    (`precision.matmul_weight_dtype`, as `params.initial_params` casts them)."""

    def struct(path: Any, x: Any, s: Any) -> jax.ShapeDtypeStruct:
        name = str(getattr(path[-1], "key", path[-1]))
        return jax.ShapeDtypeStruct(
            x.shape, precision.matmul_weight_dtype(name, dtype) or x.dtype, sharding=s
        )

    return jax.tree_util.tree_map_with_path(struct, tree, shardings)


def abstract_batch(config: RunConfig, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch as int32 shape structs `[B, T]` / `[B, S]`, data-sharded."""
    lengths = config.task_feature_lengths
    length = {"encoder_input_tokens": lengths["inputs"]}
    data = partitioning.data_sharding(mesh)
    return {
        name: jax.ShapeDtypeStruct(
            (config.batch_size, length.get(name, lengths["targets"])), jnp.int32, sharding=data
        )
        for name in BATCH_FEATURES
    }


def abstract_state(
    model: PromptModel,
    mesh: jax.sharding.Mesh,
    optimizer: optax.GradientTransformation,
    config: RunConfig,
) -> tuple[step.TrainState, Any]:
    """The run's `(state, frozen)` as shape structs with the shardings the real arrays get."""
    boxed = params.abstract_params(model, config.task_feature_lengths)
    split = lambda tree: optimizers.split_params(tree, config.trainable_params_regex)  # noqa: E731
    trainable_sh, frozen_sh = split(partitioning.params_shardings(boxed, mesh))
    trainable, frozen = split(nn.unbox(boxed))
    dtype = None if config.frozen_dtype is None else jnp.dtype(config.frozen_dtype)
    trainable = shaped(trainable, trainable_sh)
    frozen = shaped(frozen, frozen_sh, dtype)
    init = functools.partial(step.init_state, optimizer, first_step=config.first_step)
    state = jax.eval_shape(init, trainable)
    shardings = step.TrainState(
        partitioning.replicated(mesh),
        trainable_sh,
        partitioning.opt_state_shardings(optimizer, trainable, mesh),
    )
    return shaped(state, shardings), frozen


def materialise(run: Run, log: Callable[[str], None] | None = None) -> Run:
    """The real run of an abstract one (`build_run(..., abstract=True)`), with its shardings.

    The parameters are loaded or initialized (`params.initial_params` with RANDOM_SEED's key),
    the state is `step.init_state` at the initial checkpoint's step (T5X's step counters there).

    Args:
      run: the abstract run.
      log: receives the parameter loading summary (None: silent).

    Returns:
      A new `Run` holding global arrays; the same model, mesh, optimizer and `step_fn`.

    Raises:
      ValueError: checkpoint or prompt file shapes do not fit the model.
    """
    config = run.config
    init_rng, step_rng = params.run_keys(config.random_seed)
    trainable, frozen = params.initial_params(
        run.model,
        run.mesh,
        init_rng,
        config.task_feature_lengths,
        config.initial_checkpoint_path,
        config.trainable_params_regex,
        config.frozen_dtype,
        config.prompt_file,
        log=log,
    )
    init = functools.partial(step.init_state, run.optimizer, first_step=config.first_step)
    state_sh = partitioning.shardings_of(run.state)
    state = jax.jit(init, out_shardings=state_sh)(trainable)
    return dataclasses.replace(run, state=state, frozen=frozen, rng=step_rng)


def _check_complete(config: RunConfig) -> None:
    """Raises ValueError naming the macro when the config cannot build a run."""
    for field, macro in (
        ("task_feature_lengths", "TASK_FEATURE_LENGTHS"),
        ("batch_size", "BATCH_SIZE"),
    ):
        if getattr(config, field) is None:
            raise ValueError(f"Building a run needs {macro}; the RunConfig has {field}=None.")


def build_run(
    config: RunConfig,
    *,
    abstract: bool = False,
    donate: bool = True,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Builds the run of `config`: model, mesh, optimizer, state, frozen parameters, jitted step.

    The abstract plan (shape structs with shardings) is made first and the step is jitted against
    its shardings; the real parameters and optimizer state are then created with exactly those
    (`materialise`), so an abstract run and a real run of one config compile the same program.

    Args:
      config: the run's configuration (`task_feature_lengths` and `batch_size` set).
      abstract: stop at the plan: `state`, `frozen` and `rng` are `jax.ShapeDtypeStruct`s
        (nothing is read or allocated; e.g. a T5-XXL step on fake CPU devices, `perf.aot`).
      donate: donate the state to the step (the trainer's; the benchmark can turn it off).
      log: receives the parameter loading summary (None: silent).

    Returns:
      The `Run`.

    Raises:
      ValueError: TASK_FEATURE_LENGTHS or BATCH_SIZE missing, NUM_PARTITIONS not dividing the
        devices or the heads, or BATCH_SIZE not dividing over the data axis (all before any
        parameter is loaded); checkpoint or prompt file shapes not fitting the model.
    """
    _check_complete(config)
    model = config.loss.model(config.model)
    mesh = build_mesh(model, config)
    optimizer = run_optimizer(model, config.optimizer)
    state, frozen = abstract_state(model, mesh, optimizer, config)
    step_fn = step.jit_train_step(
        model,
        optimizer,
        mesh,
        partitioning.shardings_of(state),
        partitioning.shardings_of(frozen),
        config.mesh.rules(),
        donate=donate,
    )
    key_dtype = jax.random.key(0).dtype
    rng = jax.ShapeDtypeStruct((), key_dtype, sharding=partitioning.replicated(mesh))
    run = Run(config, model, mesh, optimizer, state, frozen, step_fn, rng)
    return run if abstract else materialise(run, log)
