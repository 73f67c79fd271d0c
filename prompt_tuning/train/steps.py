"""TRAIN_STEPS as T5X counts it: absolute, from the initial checkpoint's step.

T5X restores the training step with the pretrained weights (a legacy checkpoint's
`optimizer/state/step`, an orbax checkpoint's `state/step`) and trains until the step reaches
`TRAIN_STEPS` ("TRAIN_STEPS includes pretrain steps", `t5x/configs/runs/finetune.gin`): 30,000
steps from `checkpoint_1100000` is `TRAIN_STEPS = 1_130_000`, as in Lester et al.'s gin files. A
Hugging Face folder has no step (0), and a random frozen model starts at 0. Step numbers in
MODEL_DIR (`checkpoints/<step>`, `prompts/step_<N>.npy`, `metrics.jsonl`) are these absolute steps;
the step-dependent optimizer counters start there too (`optimizers.start_at_step`).
"""

from __future__ import annotations

from prompt_tuning.t5 import checkpoints as t5_checkpoints


def initial_step(initial_checkpoint_path: str | None) -> int:
    """The step a run starts from: that of INITIAL_CHECKPOINT_PATH (0 for none or a HF folder).

    Raises:
      t5.CheckpointError: the checkpoint is missing, unrecognisable, or its step unreadable.
    """
    if initial_checkpoint_path is None:
        return 0
    return t5_checkpoints.checkpoint_step(initial_checkpoint_path)


def check_train_steps(
    train_steps: int, first_step: int, initial_checkpoint_path: str | None
) -> None:
    """Checks that TRAIN_STEPS lies beyond the initial checkpoint's step.

    Raises:
      ValueError: TRAIN_STEPS is not above the step of INITIAL_CHECKPOINT_PATH; the message gives
        the value that trains the intended number of steps.
    """
    if train_steps > first_step:
        return
    where = f"the step of INITIAL_CHECKPOINT_PATH {initial_checkpoint_path}" if first_step else "0"
    raise ValueError(
        f"TRAIN_STEPS = {train_steps} is not above {where} ({first_step:,}): nothing would train. "
        "TRAIN_STEPS counts absolutely, including the checkpoint's steps, as in T5X; to train N "
        f"steps set TRAIN_STEPS = {first_step} + N (e.g. {first_step + 30_000} for 30,000 steps)."
    )
