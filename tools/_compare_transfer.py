"""Prompt transfer in `tools/compare_methods.py`: source prompts, cached, and their selection.

A transfer method (`Method.sources`, e.g. SPoT's `spot_topic`) starts from prompts trained on
other tasks. Each source prompt is plain prompt tuning (`SOURCE_METHOD`) at the table's settings
(prompt length, learning rate, steps, batch) with the run's seed, trained once and saved as
`<cache>/<settings hash>/<task>_seed<seed>.npy` (`.json` beside it: its accuracy on its own task),
so a later comparison with the same frozen model and settings reuses it. Seed s of a transfer
method receives the sources of seed s.

With `Method.pick_source` (SPoT's retrieval), the target's own prompt-tuning prompt of the same
seed and budget is the target's task embedding, and only the source most similar to it reaches
the method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from prompt_tuning.analysis import similarity
from prompt_tuning.prompts import files
from prompt_tuning.train import prompt_files
from tools import _compare_lib as lib

SOURCE_METHOD = "pt_random_uniform"


@dataclasses.dataclass
class SourcePrompts:
    """Trained source prompts.

    Attributes:
      files: {(task, seed): the prompt `.npy` [P, H]}.
      accuracy: {(task, seed): the prompt's accuracy on its own task}.
      picks: {(method, target, seed): [(source, similarity)] best first} for `pick_source` methods.
    """

    files: dict[tuple[str, int], pathlib.Path]
    accuracy: dict[tuple[str, int], float]
    picks: dict[tuple[str, str, int], list[tuple[str, float]]] = dataclasses.field(
        default_factory=dict
    )


def needed_tasks(runs: Sequence[tuple[lib.Method, str]]) -> list[str]:
    """Tasks whose prompts the planned (method, target task) runs need: the methods' sources, and
    each `pick_source` run's target (its task embedding)."""
    names = [s for method, _ in runs for s in method.sources]
    names += [task for method, task in runs if method.pick_source]
    return list(dict.fromkeys(names))


def settings_key(frozen: lib.FrozenModel, settings: Mapping[str, Any]) -> str:
    """A short hash of what a source prompt depends on (model, training settings).

    The model is named by its gin file and description (the checkpoint for a pretrained one; a
    random one is always seed 0, saved in a fresh temporary folder each time).
    """
    text = json.dumps(
        dict(settings, model=frozen.model_gin, frozen=frozen.description, method=SOURCE_METHOD),
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_sources(
    names: Sequence[str],
    seeds: Sequence[int],
    *,
    tasks: Mapping[str, lib.TaskData],
    frozen: lib.FrozenModel,
    lengths: tuple[int, int],
    settings: Mapping[str, Any],
    cache_dir: str | pathlib.Path,
) -> SourcePrompts:
    """Trains (or reads from the cache) one plain prompt per source task and seed.

    Args:
      names: the source tasks (loaded in `tasks`).
      seeds: the comparison's seeds.
      tasks: the loaded tasks.
      frozen: the frozen model.
      lengths: (T, S) of the loaded tasks.
      settings: `length` (P), `learning_rate`, `steps`, `batch_size`, `pool_size`.
      cache_dir: where the prompts are kept.

    Returns:
      The `SourcePrompts`.
    """
    folder = pathlib.Path(cache_dir) / settings_key(frozen, settings)
    method = lib.METHODS[SOURCE_METHOD]
    runner = None
    out = SourcePrompts({}, {})
    for name in names:
        task = tasks[name]
        for seed in seeds:
            path = folder / f"{name}_seed{seed}.npy"
            info = path.with_suffix(".json")
            if not (path.is_file() and info.is_file()):
                if runner is None:
                    build = lambda labels: lib.build_module(
                        frozen, method, settings["length"], labels
                    )
                    runner = lib.MethodRunner(build, frozen, method.trainable_regex, lengths)
                initial = runner.initial(seed, task.labels)
                batches = lib.run_batches(
                    task.train, settings["steps"], settings["batch_size"], seed
                )
                trained, _ = runner.train(initial, batches, seed, settings["learning_rate"])
                export = prompt_files.export_form(runner.model.prompt, trained)
                folder.mkdir(parents=True, exist_ok=True)
                prompt_files.write_file(path, export)
                record = dict(
                    settings, task=name, seed=seed, accuracy=runner.accuracy(trained, task)
                )
                files.atomic_write(info, json.dumps(record, indent=1).encode())
            out.files[(name, seed)] = path
            out.accuracy[(name, seed)] = json.loads(info.read_text())["accuracy"]
            print(
                f"source prompt {name} seed={seed}: accuracy {out.accuracy[(name, seed)]:.3f} "
                f"({path})",
                file=sys.stderr,
                flush=True,
            )
    return out


def files_for(method: lib.Method, target: str, seed: int, sources: SourcePrompts) -> list[str]:
    """The source prompt files that reach `method` for a run on `target` with `seed`.

    With `pick_source`, only the most similar source (SPoT's retrieval); the ranking is recorded
    in `sources.picks`.
    """
    if not method.sources:
        return []
    if method.pick_source is None:
        return [str(sources.files[(name, seed)]) for name in method.sources]
    read = similarity.read_task_embedding
    candidates = {name: read(sources.files[(name, seed)]) for name in method.sources}
    ranking = similarity.rank_sources(
        read(sources.files[(target, seed)]), candidates, method.pick_source
    )
    sources.picks[(method.name, target, seed)] = ranking
    return [str(sources.files[(ranking[0][0], seed)])]


def section(sources: SourcePrompts) -> str:
    """Markdown: each source prompt's accuracy on its own task, and the retrieval's picks."""
    lines = [
        f"Source prompts ({SOURCE_METHOD}, same settings and seed as the target run), accuracy on "
        "their own task:",
        "",
        "| source task | seed | accuracy |",
        "|---|---|---|",
    ]
    for (name, seed), accuracy in sorted(sources.accuracy.items()):
        lines.append(f"| {name} | {seed} | {100 * accuracy:.1f} |")
    if sources.picks:
        lines += ["", "Retrieval (similarity of each source to the target's own prompt):", ""]
        lines += ["| method | target | seed | ranking |", "|---|---|---|---|"]
        for (name, target, seed), ranking in sorted(sources.picks.items()):
            ranked = ", ".join(f"{s} {v:.3f}" for s, v in ranking)
            lines.append(f"| {name} | {target} | {seed} | {ranked} |")
    return "\n".join(lines)
