"""A training run's MODEL_DIR: where each file lives, what it holds, which prompt export is the
run's "best" and "latest", and how its files are written (atomically) and read back.

    config.gin                   the operative gin config (`gin_utils.run_main`, process 0)
    config_eval.gin, config_infer.gin   the same for `prompt_tuning.eval` / `.infer`
    checkpoints/<step>/state/    orbax PyTree: trainable params, optimizer state, step
    checkpoints/<step>/meta/     JSON: step, data position, seed, task, ...
                                 (both `train.checkpoints.TrainCheckpointer`; KEEP steps kept)
    best/<step>/{state,meta}/    the same for the best evaluation so far (one kept)
    best.json                    {"step": N, "metric": name, "value": x} of best/ (the trainer)
    prompts/step_<N>.npy|.npz    the prompt export at each save: [P, H], [N, P, H] or the
                                 parameters .npz (`train.prompt_files.write_export`)
    prompts/best.npy|.npz        the export of best.json's step
    metrics.jsonl                one JSON object a line, {"step", "kind": "train"|"eval", ...}
                                 (`train.logging.MetricsLogger`, appended whole lines)
    tensorboard/                 TensorBoard event files (clu, when installed)
    eval/metrics_<split>.json    {"step": N, "metrics": {...}} (`predict.inference.evaluate`)
    damaged_checkpoints/<step>   damaged steps set aside on resume (`restore_newest_intact`)
    demo.md, demo.json, ...      reports the tools write (tools/demo.py, nearest_neighbors, ...)

Which export is which: the latest is `prompts/step_<N>` with the largest N (by number, so step_10
comes after step_9); the best is `prompts/best`; a run's prompt (what `pt-serve`, `pt-export`,
SOURCE_PROMPTS, TEACHER_PROMPTS and the tools take for a run folder) is its best, else its latest.
A resumed run appends to metrics.jsonl, so a step may have two records: the last one counts.

Every file here is written whole or not at all (`write_atomic`: a temporary file renamed over the
old one; orbax does the same for step folders, `metrics.jsonl` appends whole lines). Readers raise
`ModelDirError` naming the missing file and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from prompt_tuning.faults import checkpoint_checks
from prompt_tuning.prompts import files, peft_format

CONFIG_GIN = "config.gin"
CONFIG_EVAL_GIN = "config_eval.gin"  # what `python -m prompt_tuning.eval` ran with
CONFIG_INFER_GIN = "config_infer.gin"  # and `python -m prompt_tuning.infer`
CHECKPOINTS = "checkpoints"
BEST = "best"  # the best checkpoint folder, and the best prompt export's stem
BEST_JSON = "best.json"
PROMPTS = "prompts"
METRICS_JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"
EVAL = "eval"
DAMAGED = "damaged_checkpoints"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's unfinished step folders
EXPORT_SUFFIXES = (".npy", ".npz")  # arrays, then parameters (`train.prompt_files`)
_STEP_EXPORT = re.compile(r"^step_(\d+)\.(npy|npz)$")
_PROMPT_BINDING = re.compile(r"^PROMPT\s*=\s*@([\w.]+)\(", re.MULTILINE)
_MACRO_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*$")


class ModelDirError(ValueError):
    """A file the caller needs is not in MODEL_DIR; the message names it and what to do."""


def step_export_name(step: int) -> str:
    """The stem of step `step`'s prompt export: "step_<step>"."""
    return f"step_{step}"


def export_step(path: str | os.PathLike) -> int | None:
    """The step of a `prompts/step_<N>.npy|.npz` file, or None for any other name (`best.npy`)."""
    match = _STEP_EXPORT.match(pathlib.Path(path).name)
    return int(match.group(1)) if match else None


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder standing for a training run (a folder that is not a PEFT
    adapter; whether it exported anything is for `ModelDir.run_export` to say)."""
    return pathlib.Path(path).is_dir() and not peft_format.is_adapter(path)


def resolve_prompt(
    model_dir: str | os.PathLike | None = None,
    prompt: str | os.PathLike | None = None,
    step: int | None = None,
    best: bool = False,
) -> pathlib.Path:
    """The prompt a tool works on (`--model_dir`/`--prompt`/`--step`/`--best`): `prompt` itself,
    or one of MODEL_DIR's exports (`ModelDir.prompt_export`).

    Args:
      model_dir: a training run's MODEL_DIR (used when `prompt` is None).
      prompt: a prompt file (`.npy` [P, H] or [N, P, H], or a parameters `.npz`) or a PEFT
        prompt-tuning adapter folder.
      step: MODEL_DIR/prompts/step_<step> (default: the latest step).
      best: MODEL_DIR/prompts/best instead (the early-stopping pick).

    Returns:
      The prompt file (or adapter folder).

    Raises:
      ModelDirError: neither or both of `model_dir` and `prompt`, both `step` and `best`, or the
        requested prompt does not exist (the saved steps are listed).
    """
    if (model_dir is None) == (prompt is None):
        raise ModelDirError(
            "Give exactly one of --model_dir (a training run) or --prompt (a .npy)."
        )
    if prompt is None:
        return ModelDir(model_dir).prompt_export(step, best)
    if step is not None and best:
        raise ModelDirError("Give at most one of --step and --best.")
    path = pathlib.Path(prompt)
    if not (path.is_file() or peft_format.is_adapter(path)):
        raise ModelDirError(f"Prompt file {path} does not exist (nor is it a PEFT adapter folder).")
    return path


def eval_metrics_path(output_dir: str | os.PathLike, split: str) -> pathlib.Path:
    """Where `evaluate` writes a split's metrics: `<output_dir>/metrics_<split>.json`."""
    return pathlib.Path(output_dir) / f"metrics_{split}.json"


def write_atomic(path: str | os.PathLike, data: bytes, what: str) -> pathlib.Path:
    """Writes `data` to `path` whole or not at all (a temporary file renamed over `path`).

    Args:
      path: the file.
      data: its new content.
      what: what it is, for the error (e.g. "the prompt export").

    Returns:
      `path`.

    Raises:
      CheckpointWriteError: the disk is full or the folder is not writable (the path and the
        fix); the earlier file, if any, is unchanged and no temporary file is left.
    """
    path = pathlib.Path(path)
    try:
        files.atomic_write(path, data)
    except OSError as error:
        kept = (
            f"the earlier {path.name} is unchanged"
            if path.exists()
            else "no half-written file is left"
        )
        converted = checkpoint_checks.write_error(error, what, path, kept)
        if converted is error:
            raise
        raise converted from error
    return path


def checkpoint_manager(
    directory: str | os.PathLike, keep: int | None = None, create: bool = True
) -> Any:
    """The orbax `CheckpointManager` of a checkpoint folder (`checkpoints/` or `best/`), every
    reader's and writer's: items `state` (PyTree) and `meta` (JSON); it keeps the last `keep`
    steps (None: all)."""
    import orbax.checkpoint as ocp  # noqa: PLC0415 (readers of prompts and metrics need no orbax)

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)), options=options, item_handlers=handlers
    )


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """One run's MODEL_DIR (see the module docstring for the layout).

    Attributes:
      path: the folder.
    """

    path: pathlib.Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", pathlib.Path(path))

    # Paths.
    @property
    def config_gin(self) -> pathlib.Path:
        """config.gin, the operative gin config."""
        return self.path / CONFIG_GIN

    @property
    def prompts(self) -> pathlib.Path:
        """prompts/, the prompt exports."""
        return self.path / PROMPTS

    @property
    def best_json(self) -> pathlib.Path:
        """best.json, which step best/ holds."""
        return self.path / BEST_JSON

    @property
    def metrics_jsonl(self) -> pathlib.Path:
        """metrics.jsonl, the training and evaluation records."""
        return self.path / METRICS_JSONL

    @property
    def tensorboard(self) -> pathlib.Path:
        """tensorboard/, clu's event files."""
        return self.path / TENSORBOARD

    @property
    def eval_dir(self) -> pathlib.Path:
        """eval/, `evaluate`'s default EVAL_OUTPUT_DIR."""
        return self.path / EVAL

    @property
    def damaged(self) -> pathlib.Path:
        """damaged_checkpoints/, step folders a resume set aside."""
        return self.path / DAMAGED

    def checkpoints(self, best: bool = False) -> pathlib.Path:
        """`checkpoints/` (or `best/`), the orbax folder of step folders."""
        return self.path / (BEST if best else CHECKPOINTS)

    def step_dir(self, step: int, best: bool = False) -> pathlib.Path:
        """`checkpoints/<step>` (or `best/<step>`)."""
        return self.checkpoints(best) / str(step)

    def export_path(self, name: str, suffix: str) -> pathlib.Path:
        """`prompts/<name><suffix>`, e.g. ("step_100", ".npy") or ("best", ".npz")."""
        return self.prompts / f"{name}{suffix}"

    # Prompt exports.
    def exported_steps(self) -> dict[int, pathlib.Path]:
        """`{step: prompts/step_<step>.npy (or .npz)}`, ascending by step (other files ignored)."""
        found: dict[int, pathlib.Path] = {}
        if self.prompts.is_dir():
            for path in sorted(self.prompts.iterdir(), reverse=True):  # .npy wins over .npz
                step = export_step(path)
                if step is not None and path.is_file():
                    found[step] = path
        return dict(sorted(found.items()))

    def best_export(self) -> pathlib.Path | None:
        """`prompts/best.npy` (or `.npz`), or None before the first evaluation that improved."""
        for suffix in EXPORT_SUFFIXES:
            path = self.export_path(BEST, suffix)
            if path.is_file():
                return path
        return None

    def latest_export(self) -> pathlib.Path | None:
        """The export of the largest step, or None when the run exported nothing."""
        steps = self.exported_steps()
        return steps[max(steps)] if steps else None

    def run_export(self) -> pathlib.Path | None:
        """The run's prompt: its best export, else its latest; None when it exported none."""
        return self.best_export() or self.latest_export()

    def prompt_export(self, step: int | None = None, best: bool = False) -> pathlib.Path:
        """The export a tool asked for: the latest, `step`'s, or the best.

        Raises:
          ModelDirError: both `step` and `best`; or that export does not exist (the saved steps
            are listed, and what to use instead).
        """
        if step is not None and best:
            raise ModelDirError("Give at most one of --step and --best.")
        if best:
            found = self.best_export()
            if found is None:
                raise ModelDirError(
                    f"{self.prompts}/best.npy does not exist: the run has no best prompt (it is "
                    "written at the first evaluation; EVAL_PERIOD > 0). Use --step or the latest "
                    "prompt instead."
                )
            return found
        steps = self.exported_steps()
        if not steps:
            raise ModelDirError(
                f"MODEL_DIR {self.path} holds no prompts/step_<N>.npy (or .npz). Is it the "
                "MODEL_DIR of a training run that saved at least once?"
            )
        if step is None:
            return steps[max(steps)]
        if step not in steps:
            raise ModelDirError(
                f"MODEL_DIR {self.path} has no prompt for step {step}; saved steps: "
                f"{sorted(steps)}."
            )
        return steps[step]

    # config.gin.
    def has_config(self) -> bool:
        """Whether the run wrote a config.gin (runs started by `python -m prompt_tuning.train`)."""
        return self.config_gin.is_file()

    def config_macros(self) -> dict[str, str]:
        """`{NAME: value as written}` of config.gin's top-level `NAME = value` lines ({} without
        one); read as text, no gin needed."""
        if not self.has_config():
            return {}
        found = {}
        for line in self.config_gin.read_text().splitlines():
            match = _MACRO_LINE.match(line)
            if match:
                found[match.group(1)] = match.group(2)
        return found

    def prompt_module_name(self) -> str | None:
        """The prompt module config.gin binds to PROMPT (e.g. "InstancePrompt"), if any."""
        text = self.config_gin.read_text() if self.has_config() else ""
        binding = _PROMPT_BINDING.search(text)
        return binding.group(1).rsplit(".", 1)[-1] if binding else None

    def write_config(self, text: str) -> pathlib.Path:
        """Writes config.gin (atomically)."""
        return write_atomic(self.config_gin, text.encode(), "the gin config")

    # best.json.
    def read_best(self) -> dict[str, Any] | None:
        """best.json (`{"step", "metric", "value"}`), or None before the first evaluation.

        Raises:
          ValueError: the file is not JSON (it is written atomically, so it was edited by hand).
        """
        if not self.best_json.exists():
            return None
        try:
            return json.loads(self.best_json.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{self.best_json} is not JSON ({error.msg}); delete it to choose the best "
                "checkpoint anew."
            ) from None

    def write_best(self, step: int, metric: str, value: float) -> None:
        """Records which step is the best so far in best.json (atomically)."""
        record = {"step": step, "metric": metric, "value": value}
        write_atomic(self.best_json, json.dumps(record).encode(), "best.json")

    # metrics.jsonl.
    def read_metrics(self, skip_bad_lines: bool = False) -> list[dict[str, Any]]:
        """metrics.jsonl's records, in file order.

        Args:
          skip_bad_lines: skip lines that are not JSON instead of raising.

        Raises:
          ModelDirError: there is no metrics.jsonl.
          ValueError: a line is not JSON (the file and line are named).
        """
        if not self.metrics_jsonl.is_file():
            raise ModelDirError(
                f"{self.metrics_jsonl} does not exist; is {self.path} a training run's MODEL_DIR?"
            )
        records = []
        for number, line in enumerate(
            self.metrics_jsonl.read_text(encoding="utf-8").splitlines(), start=1
        ):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if skip_bad_lines:
                    continue
                raise ValueError(
                    f"{self.metrics_jsonl}, line {number} is not a JSON object ({error.msg}): "
                    f"{line[:80]!r}."
                ) from None
        return records

    def metrics(self, kind: str) -> list[dict[str, Any]]:
        """The records of one kind ("train" or "eval"), one per step (the last), by step.

        Raises:
          ModelDirError, ValueError: see `read_metrics`.
        """
        return last_per_step(self.read_metrics(), kind)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Appends one JSON line to metrics.jsonl, whole or not at all.

        Raises:
          CheckpointWriteError: the disk is full or the file cannot be written (the path and the
            fix); a partly written line is cut off again.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        line = memoryview((json.dumps(record) + "\n").encode())
        with self.metrics_jsonl.open("ab", buffering=0) as f:
            size = f.tell()
            try:
                while line:  # a write that reaches a file-size limit may be short
                    line = line[f.write(line) :]
            except OSError as error:
                f.truncate(size)
                converted = checkpoint_checks.write_error(
                    error,
                    "a metrics record",
                    self.metrics_jsonl,
                    "the earlier records are unchanged",
                )
                if converted is error:
                    raise
                raise converted from error

    # Checkpoints.
    def checkpoint_steps(self, best: bool = False) -> list[int]:
        """The complete orbax steps kept in checkpoints/ (or best/), ascending ([] without)."""
        directory = self.checkpoints(best)
        if not directory.is_dir():
            return []
        manager = checkpoint_manager(directory, create=False)
        try:
            return sorted(int(s) for s in manager.all_steps())
        finally:
            manager.close()


def last_per_step(records: list[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """metrics.jsonl records of one kind, the last per step, sorted by step (a resumed run
    appends, so a step may appear twice)."""
    by_step = {int(r["step"]): dict(r) for r in records if r.get("kind") == kind}
    return [by_step[step] for step in sorted(by_step)]
