"""Nearest vocabulary tokens of each prompt position (Lester et al., 2021, section 7).

    python tools/nearest_neighbors.py --model_dir runs/demo --top_k 5

For every prompt position p, the top-k vocabulary tokens by cosine similarity between the prompt
vector prompt[p] [H] and the rows of the frozen model's token embedding
`token_embedder/embedding` [V, H]. Lester et al. read these neighbours to interpret learned
prompts: neighbours form semantic clusters, and with class-label initialization the class labels
persist as neighbours after training. `--labels` (default: the task's label strings when
MODEL_DIR/config.gin names MIXTURE_OR_TASK_NAME and `tasks.label_strings` knows it) reports, for
each label, the prompt positions having one of the label's tokens among their top-k neighbours
(the bare word-boundary piece `▁` does not count).

Inputs:
- the prompt: `--model_dir` (prompts/step_<N>.npy of the latest step, `--step N`, or `--best`)
  or `--prompt p.npy` (or a PEFT adapter folder); `--task_id T` picks task T of a multi-task
  export [N, P, H]
  (an instance-dependent prompt's `.npz` has no fixed prompt and is refused);
- the frozen embedding: `--checkpoint` (a T5X, orbax or Hugging Face checkpoint), default the
  INITIAL_CHECKPOINT_PATH of MODEL_DIR/config.gin (without one, the random frozen model the
  trainer built from RANDOM_SEED);
- the vocabulary: `--spm` (a SentencePiece model; default the tiny T5's, which the built-in tasks
  use) and `--extra_ids` (T5's vocabulary: 100). Embedding rows beyond the vocabulary size
  (padding rows of T5 checkpoints: 32,128 rows for 32,100 tokens) are ignored.

Output: a table printed on stdout (position | neighbours with similarities) and saved as Markdown
(`--output`, default MODEL_DIR/nearest_neighbors.md; with `--prompt` only when `--output` is
given).

Letters: P prompt length, H model dim, V vocabulary size, k neighbours.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if __package__ in (None, ""):  # run as `python tools/nearest_neighbors.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.analysis.tables import markdown_table  # noqa: E402
from prompt_tuning.model_dir import ModelDir, resolve_prompt  # noqa: E402
from tools import _common  # noqa: E402

if TYPE_CHECKING:
    from prompt_tuning.train import builder

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
      ToolError: the widths differ, or the embedding has fewer rows than the vocabulary.
    """
    if prompt.shape[1] != embedding.shape[1]:
        raise _common.ToolError(
            f"The prompt has width {prompt.shape[1]} but the embedding has {embedding.shape[1]}: "
            "the prompt was trained for another model; pass that model's --checkpoint."
        )
    if embedding.shape[0] < vocab_size:
        raise _common.ToolError(
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
      ToolError: the file holds the parameters of an instance-dependent or per-layer prompt (no
        fixed prompt to compare with the vocabulary), a multi-task export without `--task_id`, or
        a `--task_id` it does not have.
    """
    from prompt_tuning.train import prompt_files  # noqa: PLC0415

    value = prompt_files.read_prompt_file(path)
    if isinstance(value, dict):
        raise _common.ToolError(
            f"{path} holds the parameters of an instance-dependent or per-layer prompt "
            f"({', '.join(sorted(value))}): IDPG and ATTEMPT compute a different prompt for every "
            "input, so there is no fixed [P, H] prompt whose neighbours could be listed."
        )
    if value.ndim == 3:
        if task_id is None or not 0 <= task_id < value.shape[0]:
            raise _common.ToolError(
                f"{path} holds {value.shape[0]} task prompts {value.shape} [N, P, H]: pass "
                f"--task_id 0..{value.shape[0] - 1} to pick one."
            )
        return value[task_id]
    if task_id is not None:
        raise _common.ToolError(f"--task_id {task_id}: {path} holds one prompt {value.shape}.")
    return value


def _default_labels(run: builder.RunConfig | None) -> list[str]:
    """The run's task label strings, or [] (no task, or a task `tasks` does not know)."""
    if run is None or run.task is None:
        return []
    import tasks  # noqa: PLC0415

    try:
        return list(tasks.label_strings(run.task) or ())
    except KeyError:
        return []


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    from tasks import vocabularies  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", help="a training run's MODEL_DIR")
    parser.add_argument(
        "--prompt", help="a .npy prompt [P, H] or a PEFT adapter folder (instead of --model_dir)"
    )
    parser.add_argument("--step", type=int, help="MODEL_DIR/prompts/step_<STEP>.npy")
    parser.add_argument("--best", action="store_true", help="MODEL_DIR/prompts/best.npy")
    parser.add_argument(
        "--checkpoint", help="frozen T5 checkpoint (default: INITIAL_CHECKPOINT_PATH of config.gin)"
    )
    parser.add_argument("--spm", default=vocabularies.TINY_SPM_PATH, help="SentencePiece model")
    parser.add_argument("--extra_ids", type=int, default=0, help="sentinel ids (T5: 100)")
    parser.add_argument("--top_k", type=int, default=5, help="neighbours per position")
    parser.add_argument("--labels", help="comma-separated class labels (default: the task's)")
    parser.add_argument("--task_id", type=int, help="task of a multi-task prompt [N, P, H]")
    parser.add_argument("--output", help="Markdown file (default MODEL_DIR/nearest_neighbors.md)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> NeighborsResult:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `NeighborsResult`.

    Raises:
      ToolError: missing or inconsistent inputs (the message names the flag to fix).
    """
    args = parse_args(argv)
    if args.top_k < 1:
        raise _common.ToolError(f"--top_k must be at least 1, got {args.top_k}.")
    path = resolve_prompt(args.model_dir, args.prompt, args.step, args.best)
    prompt = prompt_matrix(path, args.task_id)
    has_config = args.model_dir is not None and ModelDir(args.model_dir).has_config()
    run = _common.read_run_config(args.model_dir) if has_config else None
    embedding = _common.frozen_embedding(args.checkpoint, run)
    pieces = vocabulary_pieces(args.spm, args.extra_ids)
    ids, similarities = nearest_neighbors(prompt, embedding, len(pieces), args.top_k)
    labels = args.labels.split(",") if args.labels else _default_labels(run)
    labels = [label.strip() for label in labels if label.strip()]
    found = label_positions(ids, label_token_ids(labels, args.spm)) if labels else {}
    markdown = render(ids, similarities, pieces, found, str(path))
    print(markdown)
    output = args.output or (
        pathlib.Path(args.model_dir) / "nearest_neighbors.md" if args.model_dir else None
    )
    if output is not None:
        output = pathlib.Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(markdown)
        print(f"Wrote {output}")
    return NeighborsResult(
        path, ids, similarities, [[pieces[i] for i in row] for row in ids], found, markdown, output
    )


if __name__ == "__main__":
    _common.cli(main)
