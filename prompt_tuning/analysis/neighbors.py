"""Nearest vocabulary neighbours of a prompt's positions (Lester et al. 2021, section 7).

Each prompt position is compared with every row of the frozen token embedding by cosine
similarity; `render` writes the Markdown report `tools/nearest_neighbors.py` prints, with the class
labels found among the neighbours. `frozen_embedding` reads the embedding from a checkpoint or
rebuilds a run's random frozen model.

Letters: P prompt length, H model dim, V vocabulary size, k neighbours per position.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from prompt_tuning.analysis.errors import AnalysisError
from prompt_tuning.analysis.tables import markdown_table

if TYPE_CHECKING:
    from prompt_tuning.train import builder

EMBEDDING = "token_embedder/embedding"

WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁"


@dataclasses.dataclass
class NeighborsResult:
    """What `main` returns.

    Attributes:
      prompt_path: the prompt file analysed.
      ids: token ids of the neighbours `[P, k]`, most similar first.
      similarities: their cosine similarities `[P, k]`.
      pieces: the neighbours' vocabulary pieces, `[P][k]`.
      labels: `{label: positions with one of its tokens among their top-k}` (empty when no
        labels were given or found).
      markdown: the Markdown report.
      output: where the report was written (None: not written).
    """

    prompt_path: pathlib.Path
    ids: np.ndarray
    similarities: np.ndarray
    pieces: list[list[str]]
    labels: dict[str, list[int]]
    markdown: str
    output: pathlib.Path | None


def nearest_neighbors(
    prompt: np.ndarray, embedding: np.ndarray, vocab_size: int, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k tokens of each prompt position by cosine similarity.

    Args:
      prompt: `[P, H]`.
      embedding: the frozen token embedding `[V', H]`, V' >= V (rows from V on are padding and
        ignored).
      vocab_size: V.
      top_k: k (at most V).

    Returns:
      `(ids [P, k], similarities [P, k])`, most similar first (the lower id first on ties).

    Raises:
      AnalysisError: the widths differ, or the embedding has fewer rows than the vocabulary.
    """
    if prompt.shape[1] != embedding.shape[1]:
        raise AnalysisError(
            f"The prompt has width {prompt.shape[1]} but the embedding has {embedding.shape[1]}: "
            "the prompt was trained for another model; pass that model's --checkpoint."
        )
    if embedding.shape[0] < vocab_size:
        raise AnalysisError(
            f"The embedding has {embedding.shape[0]} rows but the vocabulary {vocab_size} "
            "tokens: use the vocabulary the model was trained with (--spm, --extra_ids)."
        )
    table = embedding[:vocab_size].astype(np.float64)  # [V, H]; padding rows dropped
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    similarities = unit(prompt.astype(np.float64)) @ unit(table).T  # [P, V]
    top_k = min(top_k, vocab_size)
    ids = np.argsort(-similarities, axis=1, kind="stable")[:, :top_k]  # [P, k]
    return ids, np.take_along_axis(similarities, ids, axis=1)


def vocabulary_pieces(spm_path: str | pathlib.Path, extra_ids: int = 0) -> list[str]:
    """Every token's piece: the SentencePiece pieces, then `<extra_id_N>` as T5 numbers them.

    T5's sentinels count down from the end: id V-1 is `<extra_id_0>`.
    """
    import sentencepiece  # noqa: PLC0415

    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    return pieces + [f"<extra_id_{extra_ids - 1 - k}>" for k in range(extra_ids)]


def label_token_ids(labels: Sequence[str], spm_path: str | pathlib.Path) -> dict[str, list[int]]:
    """Each label's token ids under the SentencePiece model, without the bare `▁` piece."""
    import sentencepiece  # noqa: PLC0415

    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
    out = {}
    for label in labels:
        ids = processor.encode(label)
        out[label] = [i for i in ids if processor.id_to_piece(i) != WORD_BOUNDARY]
    return out


def label_positions(
    ids: np.ndarray, label_ids: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """For each label, the prompt positions whose top-k neighbours include one of its tokens."""
    return {
        label: [p for p in range(ids.shape[0]) if set(ids[p].tolist()) & set(tokens)]
        for label, tokens in label_ids.items()
    }


def render(
    ids: np.ndarray,
    similarities: np.ndarray,
    pieces: Sequence[str],
    labels: Mapping[str, Sequence[int]],
    title: str,
) -> str:
    """The Markdown report: one row per position, then the label summary."""
    rows = [
        [p, ", ".join(f"`{pieces[i]}` {s:.3f}" for i, s in zip(ids[p], similarities[p]))]
        for p in range(ids.shape[0])
    ]
    text = f"# Nearest neighbours: {title}\n\n"
    text += markdown_table(["position", f"top-{ids.shape[1]} tokens (cosine)"], rows)
    if labels:
        text += "\n## Class labels among the neighbours\n\n"
        label_rows = [
            [label, "yes" if found else "no", ", ".join(map(str, found)) or "-"]
            for label, found in labels.items()
        ]
        text += markdown_table(["label", "persists", "positions"], label_rows)
    return text


def prompt_matrix(path: pathlib.Path, task_id: int | None) -> np.ndarray:
    """The prompt [P, H] to analyse: the file's, or task `task_id`'s of a multi-task export.

    Raises:
      AnalysisError: the file holds the parameters of an instance-dependent or per-layer prompt (no
        fixed prompt to compare with the vocabulary), a multi-task export without `--task_id`, or
        a `--task_id` it does not have.
    """
    from prompt_tuning.train import prompt_files  # noqa: PLC0415

    value = prompt_files.read_prompt_file(path)
    if isinstance(value, dict):
        raise AnalysisError(
            f"{path} holds the parameters of an instance-dependent or per-layer prompt "
            f"({', '.join(sorted(value))}): IDPG and ATTEMPT compute a different prompt for every "
            "input, so there is no fixed [P, H] prompt whose neighbours could be listed."
        )
    if value.ndim == 3:
        if task_id is None or not 0 <= task_id < value.shape[0]:
            raise AnalysisError(
                f"{path} holds {value.shape[0]} task prompts {value.shape} [N, P, H]: pass "
                f"--task_id 0..{value.shape[0] - 1} to pick one."
            )
        return value[task_id]
    if task_id is not None:
        raise AnalysisError(f"--task_id {task_id}: {path} holds one prompt {value.shape}.")
    return value


def frozen_embedding(
    checkpoint: str | None = None, run: builder.RunConfig | None = None
) -> np.ndarray:
    """The frozen model's token embedding `token_embedder/embedding` [V, H] as float32.

    Args:
      checkpoint: any checkpoint `prompt_tuning.t5.checkpoints.read_variable` reads (HF, legacy
        T5X, orbax); wins over `run`.
      run: a run whose config.gin names INITIAL_CHECKPOINT_PATH (or, without one, whose random
        frozen model is rebuilt from RANDOM_SEED).

    Returns:
      The embedding table.

    Raises:
      AnalysisError: neither input is given.
    """
    from prompt_tuning import t5  # noqa: PLC0415
    from prompt_tuning.predict import restore  # noqa: PLC0415

    if checkpoint is None:
        if run is None:
            raise AnalysisError(
                "No frozen model: pass --checkpoint (a T5X or Hugging Face checkpoint) or a "
                "--model_dir whose config.gin names INITIAL_CHECKPOINT_PATH."
            )
        if run.initial_checkpoint_path is None:
            frozen = restore.frozen_params_of(run)
            return np.asarray(frozen["token_embedder"]["embedding"], np.float32)
        checkpoint = run.initial_checkpoint_path
    return np.asarray(t5.checkpoints.read_variable(checkpoint, EMBEDDING), np.float32)


def analyse(
    path: pathlib.Path,
    prompt: np.ndarray,
    embedding: np.ndarray,
    spm_path: str | pathlib.Path,
    extra_ids: int,
    top_k: int,
    labels: Sequence[str],
) -> NeighborsResult:
    """The neighbours of `prompt` [P, H] and their Markdown report (not written: `output` None).

    Args:
      path: the prompt file (the report's title).
      prompt: the prompt [P, H] (`prompt_matrix`).
      embedding: the frozen token embedding [V', H] (`frozen_embedding`).
      spm_path: the SentencePiece model of the vocabulary.
      extra_ids: T5's sentinel ids after the SentencePiece pieces.
      top_k: k, at least 1.
      labels: class labels whose tokens are looked for among the neighbours (may be empty).

    Raises:
      AnalysisError: the prompt does not fit the embedding or vocabulary.
    """
    pieces = vocabulary_pieces(spm_path, extra_ids)
    ids, similarities = nearest_neighbors(prompt, embedding, len(pieces), top_k)
    labels = [label.strip() for label in labels if label.strip()]
    found = label_positions(ids, label_token_ids(labels, spm_path)) if labels else {}
    markdown = render(ids, similarities, pieces, found, str(path))
    neighbours = [[pieces[i] for i in row] for row in ids]
    return NeighborsResult(path, ids, similarities, neighbours, found, markdown, None)
