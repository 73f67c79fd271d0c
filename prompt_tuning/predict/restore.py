"""Parameters and predictors for evaluation, inference and serving, on the training mesh.

`load_params` is what `pt-eval`, `pt-infer`, the analysis tools and a prompt server call: every
process builds the same `("data", "model")` mesh as training (NUM_PARTITIONS), loads the frozen
model sharded (each host reads only its devices' slices) and adds the prompt from PROMPT_FILE or a
run's MODEL_DIR; `make_predictor` wraps one prompt, or several as a majority-vote ensemble over
the one frozen model. Predictors find the mesh from the parameters, so a server only keeps
`(predictor, params)`:

    params, _ = restore.load_params(model, {"inputs": 512, "targets": 16},
                                    initial_checkpoint_path=..., prompt_file=..., num_partitions=8)
    predictor, params = restore.make_predictor(model, params)
    tokens = predictor.predict(params, batch)      # every process calls it with the same batch

Letters: P prompt length, H model dim.
"""

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning.parallel import partitioning
from prompt_tuning.predict import ensemble, predictor
from prompt_tuning.train import checkpoints, optimizers, prompt_files
from prompt_tuning.train import params as run_params
from prompt_tuning.train.model import PromptModel

if TYPE_CHECKING:
    from prompt_tuning.train import builder


def as_prompt_model(model: Any) -> PromptModel:
    """`model` itself when it is a `PromptModel`, else `PromptModel(model)` (MODEL is a module)."""
    return model if isinstance(model, PromptModel) else PromptModel(model)


def read_prompt_file(
    path: str | os.PathLike, model: PromptModel
) -> np.ndarray | dict[str, np.ndarray]:
    """Reads a PROMPT_FILE and checks that it fits the model's prompt (`prompt_files`).

    Args:
      path: a `[P, H]` or `[N, P, H]` `.npy`, a parameters `.npz`, or a PEFT adapter folder.
      model: the model whose prompt parameters it replaces.

    Returns:
      The prompt array (`[P, H]`, or `[N, P, H]` for a bank) for an array file, else the
      parameters `{path under encoder/prompt: array}` of a `.npz`.

    Raises:
      FileNotFoundError: no such file.
      PromptFileError (a ValueError): not a prompt file, or one of another form or shape than the
        model's prompt (both are named, with the gin file to use).
    """
    abstract = nn.unbox(run_params.abstract_params(model, {"inputs": 1, "targets": 1}))
    content = prompt_files.read_prompt_file(path)
    shapes = prompt_files.parameter_shapes(abstract)
    values = prompt_files.values_for(content, shapes, model.prompt, path)
    return values["prompt"] if isinstance(content, np.ndarray) else values


def load_frozen_params(
    model: PromptModel,
    task_feature_lengths: Mapping[str, int],
    initial_checkpoint_path: str | None = None,
    random_seed: int = 0,
    trainable_params_regex: str = optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX,
    frozen_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """The frozen parameters of a run alone, as `load_params` builds them (no prompt needed).

    Args:
      model: the run's `PromptModel`.
      task_feature_lengths: TASK_FEATURE_LENGTHS.
      initial_checkpoint_path: the frozen T5; None: the random model of RANDOM_SEED.
      random_seed: RANDOM_SEED.
      trainable_params_regex: TRAINABLE_PARAMS_REGEX (what is not frozen).
      frozen_dtype: FROZEN_DTYPE.
      mesh: where to place them (default: one device, for the host-side analysis tools).

    Returns:
      The frozen parameter tree (global arrays on `mesh`).

    Raises:
      FileNotFoundError: INITIAL_CHECKPOINT_PATH does not exist.
    """
    checkpoints.check_initial_checkpoint(initial_checkpoint_path)
    mesh = mesh or partitioning.make_mesh(1, jax.local_devices()[:1])
    return run_params.initial_params(
        model,
        mesh,
        run_params.run_keys(random_seed)[0],
        task_feature_lengths,
        initial_checkpoint_path,
        trainable_params_regex,
        frozen_dtype,
        allow_no_trainable=True,
        log=None,
    )[1]


def load_params(
    model: PromptModel,
    task_feature_lengths: Mapping[str, int],
    initial_checkpoint_path: str | None = None,
    prompt_file: str | None = None,
    model_dir: str | None = None,
    checkpoint: str = "latest",
    random_seed: int = 0,
    trainable_params_regex: str = optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX,
    frozen_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    num_partitions: int = 1,
    model_parallel_submesh: Sequence[int] | None = None,
) -> tuple[dict[str, Any], int | None]:
    """Full parameters for evaluation, inference or serving, as global arrays on the mesh.

    The frozen weights are loaded sharded (each host reads its devices' slices) or built as the
    trainer builds them (`params.initial_params` with the same RANDOM_SEED key), so a run without
    INITIAL_CHECKPOINT_PATH gets its random frozen model back. Every process calls it. A server
    keeps the returned params and calls a predictor (`make_predictor`) with them; the predictor
    finds the mesh from them.

    Args:
      model: the `PromptModel` (its prompt module as in training).
      task_feature_lengths: TASK_FEATURE_LENGTHS (shapes of the initialization batch).
      initial_checkpoint_path: the frozen T5 (INITIAL_CHECKPOINT_PATH); None: RANDOM_SEED init.
      prompt_file: a prompt `.npy` or PEFT adapter folder (PROMPT_FILE); wins over `model_dir`.
      model_dir: a training run's MODEL_DIR. Without it and without `prompt_file`, a model with no
        prompt (PROMPT=None) is the frozen checkpoint alone.
      checkpoint: "latest" or "best" checkpoint of `model_dir`.
      random_seed: RANDOM_SEED.
      trainable_params_regex: TRAINABLE_PARAMS_REGEX (what MODEL_DIR checkpoints hold).
      frozen_dtype: FROZEN_DTYPE, e.g. "bfloat16" (None: as stored), as in training.
      mesh: the mesh to place the parameters on (default: `partitioning.make_mesh` over every
        device of every process with `num_partitions` / `model_parallel_submesh`).
      num_partitions: NUM_PARTITIONS, the "model" axis size, as in training.
      model_parallel_submesh: T5X's TPU block for the model axis instead.

    Returns:
      (params, step): step is the restored checkpoint's step, or None for a PROMPT_FILE or the
      frozen model alone.

    Raises:
      ValueError: a model with a prompt gets neither PROMPT_FILE nor MODEL_DIR, `checkpoint` is
        unknown, NUM_PARTITIONS does not divide the devices or the heads, or the PROMPT_FILE's
        shape does not fit the model (both shapes are named).
      FileNotFoundError: a missing checkpoint, run or prompt file.
    """
    if not prompt_file and not model_dir and model.prompt is not None:
        raise ValueError(
            "Nothing to evaluate: set PROMPT_FILE (a .npy prompt) or MODEL_DIR (a training run), "
            "or PROMPT=None to evaluate the frozen model alone."
        )
    if checkpoint not in ("latest", "best"):
        raise ValueError(f"checkpoint must be 'latest' or 'best', got {checkpoint!r}.")
    checkpoints.check_initial_checkpoint(initial_checkpoint_path)
    if prompt_file:
        read_prompt_file(prompt_file, model)  # Names both forms or shapes when they differ.
    if mesh is None:
        mesh = partitioning.make_mesh(num_partitions, None, model_parallel_submesh)
    partitioning.check_model_fits_mesh(model.config, mesh)
    trainable, frozen = run_params.initial_params(
        model,
        mesh,
        run_params.run_keys(random_seed)[0],
        task_feature_lengths,
        initial_checkpoint_path,
        trainable_params_regex,
        frozen_dtype,
        prompt_file=prompt_file or None,
        allow_no_trainable=model.prompt is None,
        log=None if jax.process_index() else logging.info,
    )
    full = optimizers.merge_params(trainable, frozen)
    if prompt_file or not model_dir:
        return full, None
    step, trained = checkpoints.load_trained_params(model_dir, best=checkpoint == "best", mesh=mesh)
    return optimizers.merge_params(trained, full), step


def make_predictor(
    model: PromptModel,
    params: dict[str, Any],
    prompt_paths: Sequence[str] = (),
    decode_method: str = "greedy",
    beam_size: int = 4,
) -> tuple[predictor.Predictor, dict[str, Any]]:
    """A single-prompt predictor, or a prompt ensemble when several prompt files are given.

    Args:
      model: the plain-prompt `PromptModel`.
      params: its full parameters (the frozen weights are reused for the ensemble).
      prompt_paths: two or more `.npy` prompts `[P, H]` make an ensemble over one frozen model.
      decode_method: "greedy" or "beam".
      beam_size: beams for "beam".

    Returns:
      (predictor, params to call it with).
    """
    if len(prompt_paths) < 2:
        return predictor.Predictor(model, decode_method, beam_size), params
    prompts = [read_prompt_file(path, model) for path in prompt_paths]
    bank = ensemble.bank_prompt(len(prompts), prompts[0].shape[0])
    bank_model = PromptModel(model.module.clone(prompt=bank))
    members = ensemble.PromptEnsemble(bank_model, len(prompts), decode_method, beam_size)
    return members, ensemble.bank_params(params, prompts)


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    """What `restore` loads and how its predictor decodes (the settings of `pt-eval`/`pt-infer`).

    Attributes:
      prompt_files: PROMPT_FILE: one prompt, or several for a prompt ensemble (majority vote);
        empty: the prompt comes from `model_dir` (or the model has none).
      model_dir: MODEL_DIR of a training run (used when there is no prompt file).
      checkpoint: "latest" or "best" checkpoint of `model_dir`.
      initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (None: the RANDOM_SEED frozen model).
      random_seed: RANDOM_SEED.
      frozen_dtype: FROZEN_DTYPE (None: frozen weights as stored).
      mesh: the mesh settings (NUM_PARTITIONS or model_parallel_submesh), as in training.
      decode_method: "greedy" or "beam".
      beam_size: beams for "beam".
    """

    prompt_files: tuple[str, ...] = ()
    model_dir: str | None = None
    checkpoint: str = "latest"
    initial_checkpoint_path: str | None = None
    random_seed: int = 0
    frozen_dtype: str | None = None
    mesh: partitioning.MeshConfig = partitioning.MeshConfig()
    decode_method: str = "greedy"
    beam_size: int = 4


def prompt_file_list(prompt_file: str | Sequence[str] | None) -> tuple[str, ...]:
    """PROMPT_FILE (one path, a list of them, or None) as a tuple of paths."""
    if isinstance(prompt_file, str | os.PathLike):
        return (os.fspath(prompt_file),)
    return tuple(prompt_file or ())


def restore(
    model: Any, task_feature_lengths: Mapping[str, int], config: RestoreConfig
) -> tuple[predictor.Predictor, dict[str, Any], int | None]:
    """Parameters and predictor for one PROMPT_FILE, a list of them (ensemble) or a MODEL_DIR.

    The mesh and the heads are checked before anything is loaded.

    Raises:
      ValueError: NUM_PARTITIONS does not divide the devices or the heads.
    """
    model = as_prompt_model(model)
    mesh = config.mesh.make()
    partitioning.check_model_fits_mesh(model.config, mesh)
    files = list(config.prompt_files)
    full, step = load_params(
        model,
        task_feature_lengths,
        config.initial_checkpoint_path,
        files[0] if files else None,
        config.model_dir,
        config.checkpoint,
        config.random_seed,
        frozen_dtype=config.frozen_dtype,
        mesh=mesh,
    )
    members, full = make_predictor(model, full, files, config.decode_method, config.beam_size)
    return members, full, step


def batch_size_for(batch_size: int, params: Any) -> int:
    """BATCH_SIZE for predicting with `params`: rounded up so their mesh's data axis divides it
    (the padded rows are dropped; `partitioning.evaluation_batch_size`)."""
    mesh = predictor.mesh_of(params)
    return batch_size if mesh is None else partitioning.evaluation_batch_size(batch_size, mesh)


def frozen_params_of(run: "builder.RunConfig", checkpoint: str | None = None) -> dict[str, Any]:
    """The frozen T5 parameters of a run, as host numpy arrays (`load_frozen_params`).

    They come from `checkpoint`, else the run's INITIAL_CHECKPOINT_PATH, else the random model the
    trainer initialized from RANDOM_SEED.

    Args:
      run: the run's config (e.g. `gin_utils.read_run_config(model_dir)`).
      checkpoint: a frozen T5 checkpoint overriding INITIAL_CHECKPOINT_PATH.

    Returns:
      The frozen parameter tree (no prompt parameters).
    """
    frozen = load_frozen_params(
        PromptModel(run.model),
        run.task_feature_lengths or {},
        checkpoint or run.initial_checkpoint_path,
        run.random_seed,
        run.trainable_params_regex,
        run.frozen_dtype,
    )
    return jax.tree.map(np.asarray, jax.device_get(frozen))
