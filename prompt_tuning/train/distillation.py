"""Prompt distillation (MPT's source stage, Wang et al., 2023): teachers are single-task prompts.

The student is the run's prompt (e.g. `prompts.MultitaskPrompt`); the teacher is the same frozen
model with task k's own prompt (TEACHER_PROMPTS, one per task id, read with
`prompt_files.read_prompt_file`). The loss becomes

    loss = CE + λ_KL · KL(teacher logits ‖ student logits) + λ_MSE · MSE(hidden states)

(`losses.distillation_terms`), the hidden states being the encoder's outputs at the input
positions (not the prompt positions, so teacher and student prompts may differ in length).

Letters: N tasks, P prompt length, H model dim.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from prompt_tuning.model_dir import ModelDir, is_run
from prompt_tuning.train import prompt_files

# MPT's weights: L = L_PLM + λ (L_Logits + L_Hidden) with λ = 0.9 (section 3.2 / 4).
PAPER_WEIGHT = 0.9


@dataclasses.dataclass(frozen=True, eq=False)
class PromptDistillation:
    """An optional loss component: distill per-task teacher prompts into the trained prompt.

    Attributes:
      teacher_prompts: one prompt per task id, in task-id order (`.npy` [P, H], a run folder
        (its `prompts/best` or latest step), a PEFT adapter folder), or a single `[N, P, H]` file.
      kl_weight: λ_KL.
      hidden_weight: λ_MSE.
      temperature: τ of the logits KL.
    """

    teacher_prompts: Sequence[str | os.PathLike]
    kl_weight: float = PAPER_WEIGHT
    hidden_weight: float = PAPER_WEIGHT
    temperature: float = 1.0

    def __post_init__(self):
        if isinstance(self.teacher_prompts, (str, os.PathLike)):
            object.__setattr__(self, "teacher_prompts", (self.teacher_prompts,))
        if not self.teacher_prompts:
            raise ValueError("TEACHER_PROMPTS is empty: give one teacher prompt per task id.")
        if self.temperature <= 0:
            raise ValueError(f"The distillation temperature must be > 0, not {self.temperature}.")

    def teacher_table(self) -> np.ndarray:
        """The teachers' prompts `[N, P, H]` float32, row k for task id k.

        Raises:
          prompt_files.PromptFileError: a file that is not a plain prompt, or prompts of
            different shapes (naming the files).
          FileNotFoundError: a missing file.
        """
        rows = []
        for source in self.teacher_prompts:
            path = pathlib.Path(source)
            if is_run(path):
                found = ModelDir(path).run_export()
                if found is None:
                    raise FileNotFoundError(
                        f"TEACHER_PROMPTS: the run folder {path} exported no prompt "
                        "(prompts/best.npy or prompts/step_<N>.npy); train the teacher first."
                    )
                path = found
            value = prompt_files.read_prompt_file(path)
            if not isinstance(value, np.ndarray):
                raise prompt_files.PromptFileError(
                    f"TEACHER_PROMPTS: {path} holds parameters (.npz), not a plain prompt; a "
                    "teacher is a [P, H] prompt (or [N, P, H], one per task)."
                )
            rows.extend(value if value.ndim == 3 else [value])
        shapes = {row.shape for row in rows}
        if len(shapes) != 1:
            raise prompt_files.PromptFileError(
                f"TEACHER_PROMPTS {list(map(str, self.teacher_prompts))} have different shapes "
                f"{sorted(shapes)}; every teacher prompt must be [P, H] with one P and H."
            )
        return np.stack(rows).astype(np.float32)  # [N, P, H]
