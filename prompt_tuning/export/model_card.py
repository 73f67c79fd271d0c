"""The model card (`README.md`) written beside an exported adapter: what it is and how it was made.

What a training run's MODEL_DIR tells (each part only when known):
- the task: MIXTURE_OR_TASK_NAME of `config.gin`;
- the metrics: the evaluation record of `metrics.jsonl` at the exported step (`best.json`'s step
  for `prompts/best`, N for `prompts/step_<N>`);
- the training settings: a few macros of `config.gin` (PROMPT, PROMPT_LENGTH, TRAIN_STEPS, ...).

`config.gin` is read as text (one `NAME = value` line per macro, as the trainer writes it); library
code never imports gin.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

from prompt_tuning.model_dir import ModelDir, export_step

SETTINGS = (
    "PROMPT",
    "PROMPT_LENGTH",
    "TRAIN_STEPS",
    "BATCH_SIZE",
    "LEARNING_RATE",
    "TASK_FEATURE_LENGTHS",
    "INITIAL_CHECKPOINT_PATH",
    "RANDOM_SEED",
)


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What is known of the run that trained a prompt (all optional).

    Attributes:
      source: the prompt file exported.
      task: MIXTURE_OR_TASK_NAME.
      step: the training step of the exported prompt.
      metrics: its evaluation metrics `{name: value}`.
      settings: `{macro: value as written in config.gin}`.
    """

    source: str
    task: str | None = None
    step: int | None = None
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    settings: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _eval_record(run: ModelDir, step: int | None) -> dict[str, Any]:
    """The last evaluation record of metrics.jsonl at `step` (without step and kind)."""
    if step is None or not run.metrics_jsonl.is_file():
        return {}
    record = {}
    for entry in run.read_metrics(skip_bad_lines=True):
        if entry.get("kind") == "eval" and entry.get("step") == step:
            record = {k: v for k, v in entry.items() if k not in ("step", "kind")}
    return record


def _best_step(run: ModelDir) -> int | None:
    """best.json's step (None without one, or when it does not parse)."""
    try:
        return (run.read_best() or {}).get("step")
    except ValueError:
        return None


def run_facts(source: pathlib.Path, model_dir: pathlib.Path | None) -> RunFacts:
    """What MODEL_DIR says about the prompt file `source` (only `source` when there is no run).

    Args:
      source: the exported prompt file (`MODEL_DIR/prompts/best.npy` or `step_<N>.npy`).
      model_dir: the run's MODEL_DIR, or None for a loose prompt file.
    """
    if model_dir is None:
        return RunFacts(str(source))
    run = ModelDir(model_dir)
    macros = run.config_macros()
    step = export_step(source)
    if step is None:
        step = _best_step(run)
    task = macros.get("MIXTURE_OR_TASK_NAME")
    return RunFacts(
        source=str(source),
        task=task.strip("'\"") if task else None,
        step=step,
        metrics=_eval_record(run, step),
        settings={k: macros[k] for k in SETTINGS if k in macros},
    )


def card(
    facts: RunFacts, base_model: str, shape: tuple[int, int], task_name: str | None = None
) -> str:
    """The adapter's README.md (Hugging Face model card with YAML front matter).

    Args:
      facts: from `run_facts`.
      base_model: the frozen model (HF folder or hub name).
      shape: the prompt's (P, H).
      task_name: the task of this adapter (a multi-task export's subfolder), if any.
    """
    task = task_name or facts.task
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "tags: [prompt-tuning, t5]",
        "---",
        "",
        f"# Prompt-tuning adapter{f' for {task}' if task else ''}",
        "",
        f"A soft prompt of {shape[0]} vectors of width {shape[1]} (Lester et al., 2021), prepended "
        f"to the encoder input of the frozen `{base_model}`, trained with prompt_tuning and "
        f"exported from `{facts.source}`.",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import T5ForConditionalGeneration",
        f"base = T5ForConditionalGeneration.from_pretrained({base_model!r})",
        "model = PeftModel.from_pretrained(base, ADAPTER_DIR)",
        "```",
        "",
    ]
    if task:
        mixture = f" (training mixture `{facts.task}`)" if task_name and facts.task else ""
        lines += [f"- Task: `{task}`{mixture}"]
    if facts.step is not None:
        lines += [f"- Training step: {facts.step}"]
    if facts.metrics:
        shown = ", ".join(f"{k} = {_number(v)}" for k, v in sorted(facts.metrics.items()))
        lines += [f"- Evaluation metrics at that step: {shown}"]
    if facts.settings:
        lines += ["- Training settings:"]
        lines += [f"  - `{k} = {v}`" for k, v in facts.settings.items()]
    return "\n".join(lines).rstrip() + "\n"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
