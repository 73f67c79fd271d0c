"""The training loop: frozen T5 + trainable prompt, one jitted `train_step`, resumable.

    python -m prompt_tuning.train --gin_file=gin_configs/runs/smoke.gin \
        --gin.MODEL_DIR="'runs/demo'"

`train()` (configured by gin_configs/runs/*.gin) builds the mesh, loads the frozen model from
INITIAL_CHECKPOINT_PATH (or initializes a random one from RANDOM_SEED), splits the parameters by
TRAINABLE_PARAMS_REGEX, restores MODEL_DIR's latest checkpoint when there is one, and runs
`train_step` until TRAIN_STEPS, logging, saving, exporting the prompt and evaluating periodically.
Running the same command again resumes and ends with the same prompt as an uninterrupted run.
SIGTERM or SIGINT stops the run after the step it is on (the same step in every process), with a
checkpoint and the prompt export of that step: `faults.Stopped` (exit status 75 from the command).

`data` and `evaluation` (seqio, TensorFlow: ~0.9 GiB of memory) are imported where the loop needs
them, so a process that only builds and runs `train_step` (tools/benchmark_train.py) does not pay
for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from prompt_tuning.faults import Stopped, checkpoint_checks
from prompt_tuning.faults.agreement import StopAgreement
from prompt_tuning.faults.signals import StopSignals
from prompt_tuning.model_dir import BEST, ModelDir, step_export_name
from prompt_tuning.parallel import distributed, host_memory, partitioning
from prompt_tuning.train import builder, checkpoints, losses, optimizers, prompt_files, setup, steps
from prompt_tuning.train.model import PromptModel
from prompt_tuning.train.setup import Run
from prompt_tuning.train.step import TrainState, train_step  # noqa: F401 (re-exported)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
      step: the last step reached.
      trainable: trainable parameters at the end (numpy, on every process).
      frozen: the frozen parameters used, as global `jax.Array`s on `mesh` (never gathered to a
        host: with a model axis over several processes no host holds all of them).
      mesh: the device mesh of the run.
      train_metrics: the logged training metrics, one dict per log.
      eval_metrics: the evaluations, one dict per evaluation (with "step").
    """

    step: int
    trainable: Any
    frozen: Any
    mesh: jax.sharding.Mesh
    train_metrics: list[dict[str, float]]
    eval_metrics: list[dict[str, float]]

    def params(self) -> dict[str, Any]:
        """The full parameters on the mesh (frozen + trained prompt), e.g. for an `Evaluator`."""
        return optimizers.merge_params(
            partitioning.replicate(self.trainable, self.mesh), self.frozen
        )


def _mean_metrics(history: Sequence[Mapping[str, jax.Array]]) -> dict[str, float]:
    """Averages per-step metrics fetched from the devices."""
    fetched = partitioning.to_host(list(history))
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _prompt_diagnostics(prompt: Any, trainable: Any) -> dict[str, float]:
    """Extra metrics of special prompts.

    A RankProbePrompt logs the number of positive (`prompt_positive_diagonal`) and negative
    (`prompt_negative_diagonal`) diagonal entries of Sigma (zeros count as neither) and
    r = min(P, H) (`prompt_rank`), DPT's Figure 3 (tools/rank_probe.py plots them).
    """
    from prompt_tuning.prompts import decomposed  # noqa: PLC0415

    if isinstance(prompt, decomposed.RankProbePrompt):
        variables = {"params": partitioning.to_host(trainable["encoder"]["prompt"])}
        sigma = np.asarray(variables["params"]["sigma"])  # [r]
        return {
            "prompt_positive_diagonal": float(decomposed.num_positive(variables)),
            "prompt_negative_diagonal": float(np.sum(sigma < 0)),
            "prompt_rank": float(sigma.size),
        }
    return {}


def _export(run: Run) -> Any:
    """The run's prompt export form (`prompt_files`), from its replicated trainable params."""
    params = partitioning.to_host(run.state.params)
    return prompt_files.export_form(run.model.prompt, params, width=run.model.config.emb_dim)


def _save(
    run: Run, step: int, model_dir: str, best: bool = False, position: Mapping | None = None
) -> None:
    """Checkpoints the state and exports the prompt (prompts/step_<N> or best; `prompt_files`).

    `position` is the input's (`data.TrainInput.position`), saved as `input_position`.
    """
    meta = dict(run.config.identity(), step=step, data_position=step - run.first_step)
    if position:
        meta["input_position"] = dict(position)
    run.checkpointer.save(step, run.state, meta, best=best)
    if distributed.is_primary():
        export = _export(run)
        if export is not None:
            prompt_files.write_export(model_dir, BEST if best else step_export_name(step), export)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The run's periodic evaluation.

    Attributes:
      evaluator: the task's `evaluation.Evaluator`.
      select_metric: `evaluation.select_metric`: `(metrics, best_metric) -> value`.
      best_metric: BEST_METRIC, the metric that picks the best checkpoint (None: "mean").
    """

    evaluator: Any
    select_metric: Callable[..., float]
    best_metric: str | None = None


def make_evaluator(
    eval_period: int,
    task: str,
    task_feature_lengths: Mapping[str, int],
    model: PromptModel,
    batch_size: int,
    split: str,
    eval_steps: int | None,
    decode_method: str = "greedy",
    beam_size: int = 4,
    labels: Any = None,
    best_metric: str | None = None,
) -> Evaluation | None:
    """The run's `Evaluation` of the task (None when EVAL_PERIOD is 0: no evaluation)."""
    from prompt_tuning.predict import evaluation  # noqa: PLC0415 (seqio/TF: see the module docstring

    if not eval_period:
        return None
    num_examples = None if eval_steps is None else eval_steps * batch_size
    evaluator = evaluation.Evaluator(
        task,
        task_feature_lengths,
        model,
        batch_size,
        decode_method=decode_method,
        beam_size=beam_size,
        split=split,
        num_examples=num_examples,
        labels=labels,
    )
    return Evaluation(evaluator, evaluation.select_metric, best_metric)


def _check_finite(metrics: Mapping[str, float], step: int, run: Run) -> None:
    """Stops the run on a NaN/Inf loss or trainable parameter, keeping the last good checkpoint.

    The loss of a step is computed before its update, so the updated parameters (`param_norm`)
    are checked too: a non-finite update is caught before it is saved.

    Raises:
      FloatingPointError: the loss or the updated trainable parameters are not finite.
    """
    loss, norm = metrics["loss"], metrics.get("param_norm", 0.0)
    if np.isfinite(loss) and np.isfinite(norm):
        return
    last = run.checkpointer.latest_step()
    kept = "no checkpoint was saved"
    if last is not None:
        kept = f"the last good checkpoint (step {last}) is kept"
    problems = [] if np.isfinite(loss) else [f"the training loss is {loss}"]
    if not np.isfinite(norm):
        problems.append(f"the updated trainable parameters hold NaN/Inf (norm {norm})")
    message = (
        f"At step {step} {' and '.join(problems)}; stopping ({kept}). Lower the learning rate, "
        "add warmup, or check the data."
    )
    run.logger.message(message)
    raise FloatingPointError(message)


def train(
    *,
    model: nn.Module,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    optimizer: optax.GradientTransformation | None = None,
    initial_checkpoint_path: str | None = None,
    random_seed: int = 0,
    trainable_params_regex: str = optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX,
    mixture_or_task_module: str | Sequence[str] | None = None,
    save_period: int = 1000,
    keep: int | None = 1,
    log_period: int = 100,
    eval_period: int = 0,
    eval_steps: int | None = None,
    eval_batch_size: int | None = None,
    eval_split: str = "validation",
    eval_decode_method: str = "greedy",
    eval_beam_size: int = 4,
    best_metric: str | None = None,
    eval_labels: Any = None,
    prompt_file: str | None = None,
    frozen_dtype: str | None = None,
    loss_normalizing_factor: float | str | None = None,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    distillation: Any = None,
    num_partitions: int = 1,
    model_parallel_submesh: Sequence[int] | None = None,
    num_devices: int | None = None,
    use_distributed: bool = False,
    stop_check_period: int | None = None,
) -> TrainResult:
    """Trains the prompt (the TRAINABLE_PARAMS_REGEX parameters) of a frozen T5.

    Args:
      model: the `t5.EncoderDecoder` with its prompt (MODEL).
      model_dir: where checkpoints, prompts, metrics and TensorBoard files go (MODEL_DIR).
      mixture_or_task_name: seqio task or mixture (MIXTURE_OR_TASK_NAME).
      task_feature_lengths: {"inputs": T, "targets": S} (TASK_FEATURE_LENGTHS).
      train_steps: the step to reach, counted as in T5X from the initial checkpoint's step
        (`steps`; TRAIN_STEPS): 1_130_000 trains 30,000 steps from `checkpoint_1100000`.
      batch_size: global batch size (BATCH_SIZE).
      optimizer: optax transformation; default Lester et al.'s Adafactor (`optimizers.adafactor`).
      initial_checkpoint_path: frozen T5 checkpoint (HF or T5X); None initializes a random model
        from `random_seed` (tests, smoke runs) (INITIAL_CHECKPOINT_PATH).
      random_seed: seed of initialization, dropout and data order (RANDOM_SEED).
      trainable_params_regex: parameters to train (TRAINABLE_PARAMS_REGEX).
      mixture_or_task_module: module(s) imported to register tasks (MIXTURE_OR_TASK_MODULE; the
        gin files default to "tasks"); None: the tasks are registered already.
      save_period: checkpoint every this many steps, and at the end (SAVE_PERIOD).
      keep: checkpoints kept (KEEP).
      log_period: steps between progress lines.
      eval_period: steps between evaluations (EVAL_PERIOD); 0 disables evaluation.
      eval_steps: evaluation batches (EVAL_STEPS); None evaluates the whole split.
      eval_batch_size: default `batch_size`.
      eval_split: split evaluated.
      eval_decode_method: "greedy" (default) or "beam" decoding for the decoded-prediction metrics.
      eval_beam_size: beams when `eval_decode_method` is "beam".
      best_metric: the evaluation metric that picks the best checkpoint (BEST_METRIC; higher is
        better): None for "mean" (the task's metric, or the mean of its metrics), a full key such
        as "taskless_glue_rte_v002/accuracy", or a bare metric name ("rank_accuracy") averaged over
        the tasks reporting it (see `evaluation.select_metric`).
      eval_labels: label strings rank classification scores (one list, or `{task: list}`);
        default the labels each task binds into its postprocessor (`rank_classification`).
      prompt_file: start from this prompt file (PROMPT_FILE; `prompt_files`: a `[P, H]` or
        `[N, P, H]` `.npy`, a parameters `.npz`, or a PEFT prompt-tuning adapter folder).
      frozen_dtype: store frozen weights in this dtype (e.g. "bfloat16"; FROZEN_DTYPE).
      loss_normalizing_factor: T5X's: None sums the token losses, a number divides the sum,
        "NUM_REAL_TARGET_TOKENS" / "NUM_TOTAL_TARGET_TOKENS" / "AVERAGE_PER_SEQUENCE" as T5X's
        `SpecialLossNormalizingFactor` (see `losses`; LOSS_NORMALIZING_FACTOR).
      z_loss: z-loss coefficient.
      label_smoothing: label smoothing.
      distillation: an optional `distillation.PromptDistillation` added to the loss (MPT's
        source stage: `gin_configs/prompts/mpt_source.gin`); None trains on the task loss alone.
      num_partitions: devices per model replica ("model" mesh axis; NUM_PARTITIONS), T5X's.
      model_parallel_submesh: T5X's `(x, y, z, cores)` TPU block for the model axis instead.
      num_devices: use only the first N devices (default all).
      use_distributed: join a multi-process run found by JAX's cluster detection (SLURM, Open
        MPI); the entry points' `--coordinator_address` flags do the same explicitly.
      stop_check_period: with several processes, agree on a stop (SIGTERM/SIGINT) every this
        many steps (`faults.agreement`: one 4-byte all-reduce each time); None: every step on
        accelerators, every 10 on CPUs. One process checks every step for free.

    Returns:
      A `TrainResult`.

    Raises:
      ValueError, KeyError, FileNotFoundError: bad configuration, before any training.
      FloatingPointError: the loss became NaN/Inf (the last good checkpoint is kept).
      faults.Stopped: SIGTERM/SIGINT stopped the run after saving (its message says how to resume).
    """
    from prompt_tuning.train import data  # noqa: PLC0415 (seqio/TF: see the module docstring

    if use_distributed:
        distributed.initialize(multiprocess_gpu=True)
    data.import_task_modules(mixture_or_task_module)
    data.get_task_or_mixture(mixture_or_task_name)
    checkpoints.check_initial_checkpoint(initial_checkpoint_path)
    first_step = steps.initial_step(initial_checkpoint_path)
    steps.check_train_steps(train_steps, first_step, initial_checkpoint_path)
    losses.check_normalizing_factor(loss_normalizing_factor)
    if prompt_file is not None:
        prompt_files.read_prompt_file(prompt_file)
    if eval_decode_method not in ("greedy", "beam"):
        raise ValueError(
            f"Unknown eval_decode_method {eval_decode_method!r}; use 'greedy' (the default) or "
            "'beam'."
        )
    config = builder.RunConfig(
        model=model,
        task_feature_lengths=dict(task_feature_lengths),
        batch_size=batch_size,
        task=mixture_or_task_name,
        model_dir=model_dir,
        optimizer=optimizer,
        initial_checkpoint_path=initial_checkpoint_path,
        random_seed=random_seed,
        trainable_params_regex=trainable_params_regex,
        frozen_dtype=frozen_dtype,
        prompt_file=prompt_file,
        loss=builder.LossConfig(loss_normalizing_factor, z_loss, label_smoothing, distillation),
        mesh=partitioning.MeshConfig(
            num_partitions,
            None if model_parallel_submesh is None else tuple(model_parallel_submesh),
            num_devices,
        ),
        mixture_or_task_module=mixture_or_task_module,
        first_step=first_step,
    )
    checkpoint_checks.check_model_dir_writable(model_dir)  # before loading anything
    run = setup.setup_run(config, train_steps, keep)
    evaluator = make_evaluator(
        eval_period,
        mixture_or_task_name,
        task_feature_lengths,
        run.model,
        partitioning.evaluation_batch_size(eval_batch_size or batch_size, run.mesh),
        eval_split,
        eval_steps,
        eval_decode_method,
        eval_beam_size,
        eval_labels,
        best_metric,
    )
    sizes = [sum(x.size for x in jax.tree.leaves(t)) for t in (run.state.params, run.frozen)]
    run.logger.message(
        f"Training {mixture_or_task_name} to step {train_steps} (batch {batch_size}, mesh "
        f"{dict(run.mesh.shape)} over {jax.process_count()} process(es), {run.layout.num_shards} "
        f"data shard(s)): {sizes[0]:,} trainable and {sizes[1]:,} frozen parameters; writing to "
        f"{model_dir}."
    )
    export = _export(run)  # says what prompts/step_<N> will hold (prompt_files)
    if export is not None:
        run.logger.message(f"Prompt export: {export.describe(run.model.prompt)}")
    periods = {"log": log_period, "save": save_period, "eval": eval_period if evaluator else 0}
    try:
        # Signals before this point end the process at once: no step has run, nothing is lost.
        with StopSignals("training") as signals:
            return _loop(
                run,
                evaluator,
                model_dir,
                (mixture_or_task_name, task_feature_lengths),
                train_steps,
                batch_size,
                periods,
                StopAgreement(signals, stop_check_period),
            )
    finally:
        run.checkpointer.close()
        run.logger.close()


def _loop(
    run: Run,
    evaluator: Evaluation | None,
    model_dir: str,
    task_and_lengths: tuple[str, Mapping[str, int]],
    train_steps: int,
    batch_size: int,
    periods: Mapping[str, int],
    stop: StopAgreement,
) -> TrainResult:
    """Runs steps `start_step + 1 .. train_steps` with logging, saving and evaluation.

    Raises:
      faults.Stopped: every process agreed to stop (a signal) and saved the step reached.
    """
    from prompt_tuning.train import data  # noqa: PLC0415 (seqio/TF: see the module docstring

    task, task_feature_lengths = task_and_lengths

    batches = None
    if run.start_step < train_steps:
        start = run.layout.shard_id * run.layout.batch_size
        resumed = run.start_step > run.first_step
        batches = data.train_batches(
            task, task_feature_lengths, batch_size, run.config.random_seed,
            (start, start + run.layout.batch_size),
            run.checkpointer.read_meta(run.start_step) if resumed else None,
            run.start_step - run.first_step,
        )  # fmt: skip
    train_log, eval_log, pending = [], [], []
    best = ModelDir(model_dir).read_best()
    if run.start_step > run.first_step and run.start_step >= train_steps:
        run.logger.message(
            f"MODEL_DIR {model_dir} already holds a run at step {run.start_step} "
            f"(TRAIN_STEPS {train_steps}): nothing to train. Raise TRAIN_STEPS to continue it, or "
            "use a new MODEL_DIR to start again."
        )
    elif run.start_step > run.first_step:
        run.logger.message(f"Resuming from step {run.start_step} of {train_steps}.")
    for step in range(run.start_step + 1, train_steps + 1):
        numpy_batch = next(batches)
        run.model.check_task_ids(numpy_batch, f"MIXTURE_OR_TASK_NAME {task!r}")
        batch = partitioning.shard_batch(numpy_batch, run.mesh, batch_size)
        run.state, metrics = run.step_fn(run.state, run.frozen, batch, run.rng)
        pending.append(metrics)
        if step == run.start_step + 1:  # exclude compilation from the throughput
            jax.block_until_ready(metrics)
            host_memory.release_free_memory()  # what compiling freed (see host_memory)
            run.logger.start(step)
        due = {k: bool(p) and step % p == 0 for k, p in periods.items()}
        last = step == train_steps
        stopping = stop.should_stop() and not last
        if not (due["log"] or due["save"] or due["eval"] or last or stopping):
            continue
        averaged = _mean_metrics(pending)
        pending = []
        _check_finite(averaged, step, run)
        averaged.update(_prompt_diagnostics(run.model.prompt, run.state.params))
        train_log.append(dict(run.logger.log_train(step, averaged), step=step))
        if due["save"] or last or stopping:
            legacy = not isinstance(batches, data.TrainInput)  # an old checkpoint's input
            _save(run, step, model_dir, position=None if legacy else batches.position())
        if stopping:
            raise _stopped(stop, step, train_steps, model_dir)
        if due["eval"] or (last and evaluator is not None):
            best = _evaluate(run, evaluator, step, model_dir, best, eval_log)
            host_memory.release_free_memory()  # what evaluation's programs freed
        run.logger.start(step)  # throughput counts training steps only
    final_step = int(partitioning.to_host(run.state.step))
    run.logger.message(
        f"Done at step {final_step}: checkpoints in {model_dir}/checkpoints, prompts in "
        f"{model_dir}/prompts, metrics in {model_dir}/metrics.jsonl."
    )
    return TrainResult(
        step=final_step,
        trainable=partitioning.to_host(run.state.params),
        frozen=run.frozen,
        mesh=run.mesh,
        train_metrics=train_log,
        eval_metrics=eval_log,
    )


def _stopped(stop: StopAgreement, step: int, train_steps: int, model_dir: str) -> Stopped:
    """The `Stopped` of a run that saved `step` on a signal (the entry points print it)."""
    name = stop.signals.signal_name or "a signal in another process"
    message = (
        f"Stopped by {name} at step {step} of {train_steps}: the checkpoint and the prompt "
        f"export of step {step} are saved in {model_dir}. Run the same command to resume from "
        f"step {step}."
    )
    return Stopped(message, name, step)


def _evaluate(
    run: Run, evaluator: Evaluation, step: int, model_dir: str, best: Any, eval_log: list
) -> dict[str, Any] | None:
    """Evaluates the current params, logs, and saves a best checkpoint when the metric improves.

    The best so far (`best`, from MODEL_DIR/best.json on resume) counts only when it was chosen
    on the same metric (BEST_METRIC).
    """
    params = optimizers.merge_params(run.state.params, run.frozen)
    metric_name = evaluator.best_metric
    metrics = evaluator.evaluator.evaluate(params, step)
    run.logger.log_eval(step, metrics)
    eval_log.append(dict(metrics, step=step))
    name = metric_name or "mean"
    value = float(evaluator.select_metric(metrics, metric_name))
    if best is not None and best.get("metric") != name:
        run.logger.message(
            f"best.json picked step {best['step']} on {best.get('metric')!r}; this run selects on "
            f"{name!r} (BEST_METRIC), so the best checkpoint is chosen again from now on."
        )
        best = None
    if best is None or value > best["value"]:
        _save(run, step, model_dir, best=True)
        if distributed.is_primary():
            ModelDir(model_dir).write_best(step, name, value)
        best = {"step": step, "metric": name, "value": value}
    return best
