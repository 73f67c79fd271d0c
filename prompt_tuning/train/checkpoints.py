"""Resumable training checkpoints (orbax) in MODEL_DIR's `checkpoints/<step>` and `best/<step>`
(the layout: `prompt_tuning.model_dir`). A step's `meta/` holds step, data position (batches
consumed), seed, task and the input position (`data.TrainInput.position`).

Only trainable parameters are saved: the frozen model is read again from INITIAL_CHECKPOINT_PATH
(or re-initialized from RANDOM_SEED) on restart. orbax writes each step into a temporary folder and
renames it when complete, so an interrupted save never leaves a half-written checkpoint behind; a
save that fails (full disk, read-only MODEL_DIR) removes that folder and names the file and the
fix. A resume restores the newest step that reads back whole and names the damaged ones
(`checkpoint_checks`; docs/failures_checkpoints.md).
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from prompt_tuning.faults import checkpoint_checks
from prompt_tuning.model_dir import TMP_SUFFIX, ModelDir, checkpoint_manager
from prompt_tuning.parallel import distributed


class TrainCheckpointer:
    """Saves and restores the trainable state of a run (see the module docstring).

    Attributes:
      model_dir: MODEL_DIR.
      keep: checkpoints kept (KEEP); older ones are deleted after each save.
    """

    def __init__(self, model_dir: str | os.PathLike, keep: int | None = 1):
        self.model_dir = pathlib.Path(model_dir)
        self.keep = keep
        self._layout = ModelDir(model_dir)
        self._latest = checkpoint_manager(self._layout.checkpoints(), keep)
        self._best = checkpoint_manager(self._layout.checkpoints(best=True), 1)
        self._failed = False

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._latest.latest_step()

    def save(self, step: int, state: Any, meta: Mapping[str, Any], best: bool = False) -> None:
        """Saves `state` (a pytree of arrays) and `meta` (JSON-able) at `step` and waits.

        Args:
          step: the training step (updates applied so far).
          state: trainable params, optimizer state and step.
          meta: data position and run identity (JSON).
          best: save into `best/` (one kept) instead of `checkpoints/`.

        Raises:
          CheckpointWriteError: the disk is full or MODEL_DIR is not writable (the file, the OS
            error and the fix); the unfinished folder is removed and the earlier checkpoints
            are left as they were.
        """
        manager = self._best if best else self._latest
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
        )
        try:
            manager.save(step, args=args, force=True)
            manager.wait_until_finished()
        except (OSError, ValueError) as error:
            self._failed = True
            directory = self._layout.checkpoints(best)
            _remove_unfinished(directory, step)
            last = manager.latest_step()
            kept = "no earlier checkpoint was saved"
            if last is not None:
                kept = f"the checkpoint of step {last} ({directory / str(last)}) is intact"
            converted = checkpoint_checks.write_error(
                error, f"the checkpoint of step {step}", directory / str(step), kept
            )
            if converted is error:
                raise
            raise converted from error

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores a checkpoint into the structure and shardings of `abstract_state`.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct`s (with `sharding`) like the saved state.
          step: which step (default: the latest).

        Returns:
          (state, meta).

        Raises:
          FileNotFoundError: there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint under {self._layout.checkpoints()}.")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        restored = self._latest.restore(step, args=args)
        return restored.state, dict(restored.meta)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The meta JSON of checkpoint `step` (e.g. its `input_position`), without the state."""
        restored = self._latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def restore_newest_intact(
        self, abstract_state: Any, log: Callable[[str], None] = print
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest checkpoint that reads back whole, skipping damaged ones.

        Each kept step, newest first, is checked (`checkpoint_checks.step_problem`), compared
        with `abstract_state` (a mismatch stops: it is another run, not damage) and restored.
        A damaged step is logged with what is wrong; when an older one is intact, the damaged
        folders are moved to MODEL_DIR/damaged_checkpoints/ (kept, not deleted) so that the run
        can save those steps again.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct`s (with `sharding`) like the saved state.
          log: where the messages go (the run's logger).

        Returns:
          (step, state, meta), or None when MODEL_DIR holds no checkpoint.

        Raises:
          CheckpointMismatchError: the newest readable checkpoint holds another model, prompt
            or optimizer (every differing array with both shapes).
          DamagedCheckpointError: every kept checkpoint is damaged (each folder and its problem;
            nothing is moved).
        """
        directory = self._layout.checkpoints()
        damaged: list[tuple[int, str]] = []
        for step in sorted(self._latest.all_steps(), reverse=True):
            step_dir = directory / str(step)
            problem = checkpoint_checks.step_problem(step_dir)
            if problem is None:
                try:
                    saved = self._latest.item_metadata(step).state
                except Exception as error:  # noqa: BLE001 (orbax raises many types; all damage)
                    problem = checkpoint_checks.restore_problem(error)
            if problem is None:
                saved = getattr(saved, "tree", saved)
                checkpoint_checks.check_fits(saved, abstract_state, step_dir, str(self.model_dir))
                try:
                    state, meta = self.restore(abstract_state, step)
                except Exception as error:  # noqa: BLE001 (tensorstore: ValueError of any kind)
                    problem = checkpoint_checks.restore_problem(error)
            if problem is None:
                if damaged:
                    self._set_aside(damaged, step, log)
                return step, state, meta
            log(f"Checkpoint {step_dir} is damaged: {problem}.")
            damaged.append((step, problem))
        if not damaged:
            return None
        listed = "\n  ".join(f"{directory / str(s)}: {p}" for s, p in damaged)
        raise checkpoint_checks.DamagedCheckpointError(
            f"MODEL_DIR {self.model_dir} holds no intact checkpoint (KEEP={self.keep}):\n  "
            f"{listed}\nNothing was changed. Restore those files from a backup; or move "
            f"{directory} aside to start again from the initial checkpoint; or use another "
            "MODEL_DIR. (KEEP >= 2 keeps an older checkpoint to fall back on.)"
        )

    def _set_aside(self, damaged: list[tuple[int, str]], step: int, log: Callable) -> None:
        """Moves damaged step folders to MODEL_DIR/damaged_checkpoints/ (primary process)."""
        aside = self._layout.damaged
        if distributed.is_primary():
            aside.mkdir(exist_ok=True)
            for bad, _ in damaged:
                target, n = aside / str(bad), 0
                while target.exists():
                    n += 1
                    target = aside / f"{bad}.{n}"
                os.replace(self._layout.step_dir(bad), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("prompt_tuning_damaged_checkpoints_set_aside")
        self._latest.reload()
        steps = ", ".join(str(s) for s, _ in damaged)
        log(
            f"Resuming from step {step}, the newest intact checkpoint (KEEP={self.keep}); the "
            f"damaged step(s) {steps} were moved to {aside} (delete them once inspected)."
        )

    def close(self) -> None:
        """Waits for pending saves and releases the managers.

        After a failed save the managers' own errors are not raised again (the save raised).
        """
        for manager in (self._latest, self._best):
            try:
                manager.close()
            except (OSError, ValueError):
                if not self._failed:
                    raise


def _remove_unfinished(directory: pathlib.Path, step: int) -> None:
    """Deletes the temporary folder of a failed save of `step` (primary process), freeing space."""
    if not distributed.is_primary():
        return
    for path in directory.glob(f"{step}{TMP_SUFFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def load_trained_params(
    model_dir: str | os.PathLike,
    best: bool = False,
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[int, Any]:
    """Reads the trainable params of a run's latest (or best, or `step`) checkpoint.

    Every process of a multi-host run calls it (orbax restores collectively).

    Args:
      model_dir: the run's MODEL_DIR.
      best: read the best checkpoint (tracked by evaluation) instead of the latest.
      step: read this kept checkpoint instead of the latest.
      mesh: restore as replicated global arrays on this mesh (None: host numpy arrays).

    Returns:
      (step, trainable params nested dict: numpy, or replicated arrays on `mesh`); merge with the
      frozen model via `optimizers.merge_params`.

    Raises:
      FileNotFoundError: the run has no (best) checkpoint, or none of `step` (the kept steps
        are listed).
      DamagedCheckpointError: that checkpoint does not read back whole (the folder, what is
        wrong, and the other kept steps).
    """
    directory = ModelDir(model_dir).checkpoints(best)
    if not directory.exists():
        raise FileNotFoundError(
            f"No {'best ' if best else ''}checkpoint in MODEL_DIR {model_dir} (looked for "
            f"{directory}). Train first, or pass a frozen checkpoint and PROMPT_FILE instead."
        )
    manager = checkpoint_manager(directory)
    try:
        kept = sorted(int(s) for s in manager.all_steps())
        if not kept:
            raise FileNotFoundError(f"{directory} holds no complete checkpoint.")
        step = kept[-1] if step is None else step
        if step not in kept:
            raise FileNotFoundError(
                f"MODEL_DIR {model_dir} kept no checkpoint of step {step} (kept: {kept}; KEEP "
                "limits how many are kept)."
            )
        restored = _read_params(manager, directory / str(step), step, mesh, kept)
    finally:
        manager.close()
    if mesh is not None:
        return step, restored.state["params"]
    return step, jax.tree.map(np.asarray, restored.state["params"])


def _read_params(
    manager: ocp.CheckpointManager,
    step_dir: pathlib.Path,
    step: int,
    mesh: jax.sharding.Mesh | None,
    kept: list[int],
) -> Any:
    """Restores one step of `load_trained_params`, naming any damage.

    Raises:
      DamagedCheckpointError: the step folder is damaged (what is wrong, the other kept steps).
    """
    # A target with this process's shardings: the checkpoint may come from another topology
    # (a run on more or fewer processes).
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    else:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    problem = checkpoint_checks.step_problem(step_dir)
    if problem is None:
        try:
            metadata = manager.item_metadata(step).state
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                dict(getattr(metadata, "tree", metadata)),
            )
            return manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # noqa: BLE001 (orbax/tensorstore: many types, all damage)
            problem = checkpoint_checks.restore_problem(error)
    others = [s for s in kept if s != step]
    choice = f"another kept step ({others}; the tools' --step), or " if others else ""
    raise checkpoint_checks.DamagedCheckpointError(
        f"Checkpoint {step_dir} is damaged: {problem}. Restore it from a backup, or read "
        f"{choice}the prompt exported at that step (MODEL_DIR/prompts/, as PROMPT_FILE)."
    )


def save_trained_params(
    model_dir: str | os.PathLike, step: int, params: Any, meta: Mapping[str, Any]
) -> None:
    """Writes a checkpoint of trainable params alone, readable by `load_trained_params`.

    For runs made without training (e.g. `tools/prompt_io.py import`): the state holds the
    trainer's `step` and `params` fields but no optimizer state, so `eval`/`infer` and the tools
    read it, and the trainer refuses to resume it (it names the mismatch).

    Args:
      model_dir: the new MODEL_DIR.
      step: the step to record.
      params: trainable parameters (nested dict of arrays), e.g. `{"encoder": {"prompt": ...}}`.
      meta: JSON-able run identity (seed, task, batch size, where the params came from).
    """
    state = {"step": np.int32(step), "params": params}
    checkpointer = TrainCheckpointer(model_dir, keep=1)
    try:
        checkpointer.save(step, state, dict(meta, step=step, data_position=step))
    finally:
        checkpointer.close()


def check_initial_checkpoint(path: str | None) -> None:
    """Fails early, naming INITIAL_CHECKPOINT_PATH, when the frozen checkpoint does not exist.

    Raises:
      FileNotFoundError: `path` is given but missing.
    """
    if path is None or "://" in str(path):
        return  # Remote paths are checked by the loader.
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"INITIAL_CHECKPOINT_PATH {path} does not exist. Point it at a T5X checkpoint folder "
            "(checkpoint_<step>) or a Hugging Face model folder, or leave it unset (None) for a "
            "randomly initialized model."
        )
