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

With `Method.source_stage == "mpt"` (MPT, Wang et al. 2023), the sources' prompts are teachers:
one `MultitaskPrompt` (`gin_configs/prompts/mpt_source.gin`: shared P* and a rank-one pair per
source) trains on the sources' pools together, with task ids, for steps x number of sources
steps (as the multi-task rows), and with the paper's distillation from the same seed's source
prompts (`train.distillation.PromptDistillation` defaults: CE + 0.9 KL + 0.9 MSE, tau = 1).
Its P* [P, H] is saved as `<cache>/<settings hash>/mpt-<stage hash>/shared_seed<seed>.npy` and
starts the target run (`mpt.gin`'s `MPT_SOURCE`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.analysis import similarity
from prompt_tuning.prompts import files, mpt
from prompt_tuning.train import distillation, optimizers, prompt_files
from prompt_tuning.train.model import PromptModel
from tools import _compare_lib as lib

SOURCE_METHOD = "pt_random_uniform"


@dataclasses.dataclass
class SourcePrompts:
    """Trained source prompts.

    Attributes:
      files: {(task, seed): the prompt `.npy` [P, H]}.
      accuracy: {(task, seed): the prompt's accuracy on its own task}.
      picks: {(method, target, seed): [(source, similarity)] best first} for `pick_source` methods.
      stages: {(stage, sources, seed): the stage's output `.npy`} for `source_stage` methods
        (MPT: the shared prompt P* [P, H]).
      stage_accuracy: {(stage, sources, seed): {source: accuracy of its task prompt P_k}}.
    """

    files: dict[tuple[str, int], pathlib.Path]
    accuracy: dict[tuple[str, int], float]
    picks: dict[tuple[str, str, int], list[tuple[str, float]]] = dataclasses.field(
        default_factory=dict
    )
    stages: dict[tuple[str, tuple[str, ...], int], pathlib.Path] = dataclasses.field(
        default_factory=dict
    )
    stage_accuracy: dict[tuple[str, tuple[str, ...], int], dict[str, float]] = dataclasses.field(
        default_factory=dict
    )


def needed_tasks(runs: Sequence[tuple[lib.Method, str]]) -> list[str]:
    """Tasks whose prompts the planned (method, target task) runs need: the methods' sources, and
    each `pick_source` run's target (its task embedding)."""
    names = [s for method, _ in runs for s in method.sources]
    names += [task for method, task in runs if method.pick_source]
    return list(dict.fromkeys(names))


def needed_stages(runs: Sequence[tuple[lib.Method, str]]) -> list[tuple[str, tuple[str, ...]]]:
    """The (stage, sources) source stages that the planned runs' `source_stage` methods need."""
    stages = [(m.source_stage, m.sources) for m, _ in runs if m.source_stage]
    return list(dict.fromkeys(stages))


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
    stages: Sequence[tuple[str, tuple[str, ...]]] = (),
) -> SourcePrompts:
    """Trains (or reads from the cache) one plain prompt per source task and seed, then each
    source stage (`needed_stages`) per seed, distilled from those prompts.

    Args:
      names: the source tasks (loaded in `tasks`).
      seeds: the comparison's seeds.
      tasks: the loaded tasks.
      frozen: the frozen model.
      lengths: (T, S) of the loaded tasks.
      settings: `length` (P), `learning_rate`, `steps`, `batch_size`, `pool_size`.
      cache_dir: where the prompts are kept.
      stages: (stage, sources) pairs; every source must be in `names`.

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
    for stage, sources in stages:
        for seed in seeds:
            teachers = [out.files[(name, seed)] for name in sources]
            path, accuracy = mpt_stage(
                sources, seed, teachers, tasks=tasks, frozen=frozen, lengths=lengths,
                settings=settings, folder=folder,
            )  # fmt: skip
            out.stages[(stage, tuple(sources), seed)] = path
            out.stage_accuracy[(stage, tuple(sources), seed)] = accuracy
    return out


def mixture_pool(pools: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The pools concatenated, with `task_ids` [M] = each example's pool index (its task id)."""
    out = {key: np.concatenate([pool[key] for pool in pools]) for key in pools[0]}
    sizes = [len(pool["encoder_input_tokens"]) for pool in pools]
    out["task_ids"] = np.repeat(np.arange(len(pools), dtype=np.int32), sizes)
    return out


def mpt_stage(
    sources: Sequence[str],
    seed: int,
    teachers: Sequence[pathlib.Path],
    *,
    tasks: Mapping[str, lib.TaskData],
    frozen: lib.FrozenModel,
    lengths: tuple[int, int],
    settings: Mapping[str, Any],
    folder: pathlib.Path,
) -> tuple[pathlib.Path, dict[str, float]]:
    """MPT's source stage for one seed (trained, or read from the cache).

    A `MultitaskPrompt` with one rank-one pair per source (task id = position in `sources`)
    trains on the sources' pools mixed (`mixture_pool`) for `steps * len(sources)` steps at the
    table's rate and batch, with the loss CE + λ·KL + λ·MSE from the teacher prompts (the
    paper's λ and τ: `distillation.PromptDistillation`'s defaults).

    Args:
      sources: the source tasks, in task-id order.
      seed: the run's seed (initialization, batch order, dropout).
      teachers: each source's plain prompt `.npy` of this seed, in the same order.
      tasks: the loaded tasks.
      frozen: the frozen model.
      lengths: (T, S) of the loaded tasks.
      settings: as `train_sources`'s.
      folder: the settings' cache folder.

    Returns:
      (the shared prompt P* `.npy` [P, H], {source: accuracy of its P_k on its own task}).
    """
    distill = distillation.PromptDistillation(tuple(str(t) for t in teachers))
    stage = dict(
        sources=list(sources), kl_weight=distill.kl_weight, hidden_weight=distill.hidden_weight,
        temperature=distill.temperature, steps=settings["steps"] * len(sources),
    )  # fmt: skip
    digest = hashlib.sha256(json.dumps(stage, sort_keys=True).encode()).hexdigest()[:8]
    path = folder / f"mpt-{digest}" / f"shared_seed{seed}.npy"
    info = path.with_suffix(".json")
    if not (path.is_file() and info.is_file()):
        method = lib.Method("mpt_source", lib.MPT_SOURCE_GIN, "MPT source stage", multi_task=True)
        build = lambda labels: lib.build_module(
            frozen, method, settings["length"], labels, len(sources)
        )
        runner = lib.MethodRunner(build, frozen, method.trainable_regex, lengths)
        model = PromptModel(runner.model.module, distillation=distill, **lib._LOSS)
        train = jax.jit(
            functools.partial(lib._train_run, model=model, make_optimizer=optimizers.adafactor)
        )
        pool = mixture_pool([tasks[name].train for name in sources])
        batches = lib.run_batches(pool, stage["steps"], settings["batch_size"], seed)
        model.check_task_ids(batches, "the MPT source stage's batches")
        rng = jax.random.fold_in(jax.random.key(seed), 1)
        rate = jnp.asarray(settings["learning_rate"], jnp.float32)
        initial = runner.initial(seed, tasks[sources[0]].labels)
        trained, losses = train(initial, runner.frozen, batches, rng, rate)
        accuracy = {n: runner.accuracy(trained, tasks[n], i) for i, n in enumerate(sources)}
        shared = np.asarray(jax.device_get(trained["encoder"]["prompt"][mpt.SHARED]), np.float32)
        buffer = io.BytesIO()
        np.save(buffer, shared)  # [P, H]
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(path, buffer.getvalue())
        record = dict(
            settings, **stage, seed=seed, teachers=[str(t) for t in teachers],
            accuracy=accuracy, final_loss=float(np.asarray(losses)[-1]),
        )  # fmt: skip
        files.atomic_write(info, json.dumps(record, indent=1).encode())
    accuracy = json.loads(info.read_text())["accuracy"]
    shown = ", ".join(f"{name} {value:.3f}" for name, value in accuracy.items())
    print(f"MPT source stage seed={seed}: {shown} ({path})", file=sys.stderr, flush=True)
    return path, accuracy


def files_for(method: lib.Method, target: str, seed: int, sources: SourcePrompts) -> list[str]:
    """The source prompt files that reach `method` for a run on `target` with `seed`.

    With `pick_source`, only the most similar source (SPoT's retrieval); the ranking is recorded
    in `sources.picks`.
    """
    if not method.sources:
        return []
    if method.source_stage:
        return [str(sources.stages[(method.source_stage, tuple(method.sources), seed)])]
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
    if sources.stage_accuracy:
        lines += ["", "Source stages (MPT: each source's P_k = P* ∘ u_k v_kᵀ on its own task):", ""]
        lines += ["| stage | seed | accuracy |", "|---|---|---|"]
        for (stage, _, seed), accuracy in sorted(sources.stage_accuracy.items()):
            shown = ", ".join(f"{name} {100 * value:.1f}" for name, value in accuracy.items())
            lines.append(f"| {stage} | {seed} | {shown} |")
    return "\n".join(lines)
