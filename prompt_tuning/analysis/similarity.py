"""SPoT's task embeddings and task similarity (Vu et al., ACL 2022, section 3.2).

SPoT reads a trained prompt as an embedding of its task: the prompt `e` `[L, H]` of the task
(the paper uses the prompt after a fixed number of training steps, the same for every task, so
that the prompts are comparable). Two tasks are compared by one of two measures:

- cosine of average tokens (`COSINE_AVERAGE`): the cosine between the mean-pooled prompts,
  `sim(t1, t2) = cos(1/L sum_i e1_i, 1/L sum_j e2_j)`;
- per-token average cosine (`PER_TOKEN_COSINE`): the mean cosine over every pair of prompt tokens,
  `sim(t1, t2) = 1/(L1 L2) sum_i sum_j cos(e1_i, e2_j)` (the paper's 1/L^2 when L1 = L2 = L).

Sources are ranked for a target by their similarity to it, most similar first (the paper's
retrieval: the best-ranked source prompt initializes the target's prompt).

`report` is `tools/prompt_similarity.py`'s Markdown: both matrices and the ranked sources.

Task embeddings are read from any prompt the project writes (`read_task_embedding`): a plain
`[P, H]` `.npy`, one task's row of a multi-task `[N, P, H]` export, a run's MODEL_DIR (its
`prompts/best`, else its latest `prompts/step_<N>`), or a PEFT prompt-tuning adapter folder.

Letters: L (or P) prompt length, H model dim, N tasks, S sources.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from prompt_tuning.analysis.errors import AnalysisError
from prompt_tuning.model_dir import ModelDir
from prompt_tuning.train import prompt_files
from prompt_tuning.train.prompt_files import PromptFileError

COSINE_AVERAGE = "cosine_average"
PER_TOKEN_COSINE = "per_token_cosine"
MEASURES = (COSINE_AVERAGE, PER_TOKEN_COSINE)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row stays zero (its cosine with anything is 0)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Task embeddings are prompts [L, H]; got shapes {a.shape} and {b.shape}.")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"Prompts of different model dims H ({a.shape} vs {b.shape}) cannot be compared: "
            "use prompts trained on the same frozen model."
        )
    return a, b


def cosine_average(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of average tokens: `cos(mean_i a_i, mean_j b_j)`.

    Args:
      a: a prompt [L1, H].
      b: a prompt [L2, H].

    Returns:
      The similarity in [-1, 1].
    """
    a, b = _check_pair(a, b)
    return float(_unit(a.mean(axis=0)) @ _unit(b.mean(axis=0)))


def per_token_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Per-token average cosine: the mean of `cos(a_i, b_j)` over all L1 x L2 token pairs.

    Args:
      a: a prompt [L1, H].
      b: a prompt [L2, H].

    Returns:
      The similarity in [-1, 1].
    """
    a, b = _check_pair(a, b)
    return float((_unit(a) @ _unit(b).T).mean())  # [L1, L2] cosines, averaged


_FUNCTIONS = {COSINE_AVERAGE: cosine_average, PER_TOKEN_COSINE: per_token_cosine}


def similarity(a: np.ndarray, b: np.ndarray, measure: str = COSINE_AVERAGE) -> float:
    """`measure` (one of `MEASURES`) between two prompts [L1, H] and [L2, H].

    Raises:
      ValueError: an unknown measure, or prompts that are not comparable.
    """
    if measure not in _FUNCTIONS:
        raise ValueError(f"Unknown similarity measure {measure!r}; use one of {MEASURES}.")
    return _FUNCTIONS[measure](a, b)


def similarity_matrix(
    embeddings: Mapping[str, np.ndarray], measure: str = COSINE_AVERAGE
) -> tuple[list[str], np.ndarray]:
    """Every pair's similarity.

    Args:
      embeddings: {name: prompt [L, H]}.
      measure: one of `MEASURES`.

    Returns:
      (names in order, [S, S] similarities; row i, column j compares names i and j).
    """
    names = list(embeddings)
    matrix = np.array(
        [[similarity(embeddings[r], embeddings[c], measure) for c in names] for r in names]
    )  # [S, S]
    return names, matrix


def rank_sources(
    target: np.ndarray, sources: Mapping[str, np.ndarray], measure: str = COSINE_AVERAGE
) -> list[tuple[str, float]]:
    """Candidate sources ranked for a target, most similar first (ties keep the given order).

    Args:
      target: the target task's embedding [L, H].
      sources: {name: source task embedding [L_s, H]}.
      measure: one of `MEASURES`.

    Returns:
      [(source name, similarity)] sorted by decreasing similarity.

    Raises:
      ValueError: no sources.
    """
    if not sources:
        raise ValueError("rank_sources needs at least one source prompt.")
    scored = [(name, similarity(target, value, measure)) for name, value in sources.items()]
    return sorted(scored, key=lambda pair: -pair[1])


def read_task_embedding(
    path: str | os.PathLike, task_id: int | None = None, step: int | None = None
) -> np.ndarray:
    """A task embedding (a prompt [L, H]) from a prompt file, a run folder or a PEFT adapter.

    Args:
      path: a `[P, H]` / `[N, P, H]` `.npy`, a training run's MODEL_DIR (its exported prompt), or
        a PEFT prompt-tuning adapter folder.
      task_id: the task row of a multi-task `[N, P, H]` prompt (required for one, refused
        otherwise).
      step: for a run folder, its `prompts/step_<step>` (SPoT compares prompts trained for the
        same number of steps) instead of `prompts/best` / the latest.

    Returns:
      The prompt [L, H] as float64.

    Raises:
      FileNotFoundError: no such file or folder.
      PromptFileError: a parameters `.npz` (no single prompt matrix), a run that exported no
        prompt, a missing or out-of-range `task_id`.
    """
    path = pathlib.Path(path)
    run = ModelDir(path)
    if run.prompts.is_dir():  # a run's MODEL_DIR
        steps = run.exported_steps()
        if step is not None and step not in steps:
            raise PromptFileError(
                f"Run folder {path} has no prompts/step_{step}; its exported steps: "
                f"{sorted(steps)}."
            )
        exported = steps[step] if step is not None else run.run_export()
        if exported is None:
            raise PromptFileError(f"Run folder {path} exported no prompt under prompts/ yet.")
        path = exported
    elif step is not None:
        raise PromptFileError(f"{path} is not a run folder: a step applies to a MODEL_DIR only.")
    value = prompt_files.read_prompt_file(path)
    if isinstance(value, dict):
        raise PromptFileError(
            f"{path} holds prompt parameters ({', '.join(sorted(value))}), not a prompt [P, H]: "
            "instance-dependent or per-layer prompts have no single matrix to use as a task "
            "embedding."
        )
    if value.ndim == 3:
        if task_id is None or not 0 <= task_id < value.shape[0]:
            raise PromptFileError(
                f"{path} holds {value.shape[0]} task prompts {value.shape} [N, P, H]: choose one "
                f"with a task id in [0, {value.shape[0]}) (--task_id / `path:ID`)."
            )
        return np.asarray(value[task_id], np.float64)
    if task_id is not None:
        raise PromptFileError(
            f"{path} holds one prompt {value.shape}; it has no task id {task_id}."
        )
    return np.asarray(value, np.float64)


def format_table(names: Sequence[str], matrix: np.ndarray, digits: int = 3) -> str:
    """A Markdown table of a [S, S] similarity matrix (rows and columns named)."""
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, matrix):
        lines.append(f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in row) + " |")
    return "\n".join(lines)


def plot_heatmaps(
    names: Sequence[str], matrices: Mapping[str, np.ndarray], path: str | os.PathLike
) -> None:
    """Writes one heat map per measure ({title: [S, S] matrix}), values in the cells, as a PNG."""
    import matplotlib  # noqa: PLC0415 (plotting only here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    size = 2.0 + 0.9 * len(names)
    fig, axes = plt.subplots(
        1, len(matrices), figsize=((size + 1.5) * len(matrices), size), squeeze=False
    )
    for axis, (title, matrix) in zip(axes[0], matrices.items()):
        image = axis.imshow(matrix, cmap="viridis", vmin=-1.0, vmax=1.0)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axis.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                color = "black" if matrix[i, j] > 0.3 else "white"
                axis.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color=color)
        fig.colorbar(image, ax=axis, label="similarity")
        axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_spec(spec: str) -> tuple[str, str, int | None]:
    """`[NAME=]PATH[:TASK_ID]` -> (name, path, task id or None).

    NAME defaults to the file or folder name, with `:TASK_ID` when one is given.
    """
    name, _, path = spec.rpartition("=")
    task_id = None
    head, sep, tail = path.rpartition(":")
    if sep and head and tail.isdigit():
        path, task_id = head, int(tail)
    if not name:
        name = pathlib.Path(path).stem + ("" if task_id is None else f":{task_id}")
    return name, path, task_id


def report(
    specs: Sequence[str], target: str | None, measure: str, step: int | None
) -> tuple[str, list[str], dict]:
    """Reads the prompts and builds the Markdown report.

    Returns:
      (the text, the names, {measure: [S, S] matrix}).

    Raises:
      AnalysisError: fewer than two prompts, duplicate names, an unknown `target`, unreadable files.
    """
    embeddings = {}
    for spec in specs:
        name, path, task_id = parse_spec(spec)
        if name in embeddings:
            raise AnalysisError(f"Two prompts are named {name!r}: name them with NAME=PATH.")
        try:
            embeddings[name] = read_task_embedding(path, task_id, step)
        except (FileNotFoundError, PromptFileError, ValueError) as error:
            raise AnalysisError(str(error)) from error
    if len(embeddings) < 2:
        raise AnalysisError("Give at least two prompts to compare.")
    if target is not None and target not in embeddings:
        raise AnalysisError(f"--target {target!r} is none of the prompts {list(embeddings)}.")
    matrices, sections = {}, []
    for each in MEASURES:
        try:
            names, matrices[each] = similarity_matrix(embeddings, each)
        except ValueError as error:
            raise AnalysisError(str(error)) from error
        sections.append(f"## {each}\n\n{format_table(names, matrices[each])}")
    if target is not None:
        sources = {n: v for n, v in embeddings.items() if n != target}
        ranked = rank_sources(embeddings[target], sources, measure)
        other = [m for m in MEASURES if m != measure][0]
        lines = [f"| rank | source | {measure} | {other} |", "|---|---|---|---|"]
        for rank, (name, value) in enumerate(ranked, 1):
            second = similarity(embeddings[target], sources[name], other)
            lines.append(f"| {rank} | {name} | {value:.3f} | {second:.3f} |")
        sections.insert(0, f"## Sources for {target} (by {measure})\n\n" + "\n".join(lines))
    return "# Prompt similarity (SPoT)\n\n" + "\n\n".join(sections) + "\n", names, matrices
