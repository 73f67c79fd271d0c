r"""SPoT task similarity between trained prompts: a ranking of sources, a table and a heat map.

    python tools/prompt_similarity.py topic=runs/topic keyword=runs/keyword \
        sentiment=runs/sentiment --target sentiment --heatmap similarity.png

Each argument is `[NAME=]PATH[:TASK_ID]`: a prompt `.npy` `[P, H]`, a multi-task `[N, P, H]` one
with the task row after a colon, a training run's MODEL_DIR (its `prompts/best`, else the latest
`prompts/step_<N>`; `--step N` takes `step_<N>` of every run, as SPoT compares prompts trained
for the same number of steps), or a PEFT prompt-tuning adapter folder. NAME defaults to the file
or folder name.

Prints, for both of SPoT's measures (Vu et al., 2022, section 3.2: the cosine of the mean-pooled
prompts, and the mean cosine over all pairs of prompt tokens), the similarity matrix of all the
prompts and, with `--target`, the other prompts ranked as sources for it (most similar first,
by `--measure`). `--heatmap PNG` draws both matrices; `--output` also writes the text as
Markdown. The measures live in `prompt_tuning.analysis.similarity`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/prompt_similarity.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.analysis import similarity  # noqa: E402
from prompt_tuning.prompts.files import PromptFileError  # noqa: E402
from tools._common import ToolError  # noqa: E402


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
      ToolError: fewer than two prompts, duplicate names, an unknown `target`, unreadable files.
    """
    embeddings = {}
    for spec in specs:
        name, path, task_id = parse_spec(spec)
        if name in embeddings:
            raise ToolError(f"Two prompts are named {name!r}: name them with NAME=PATH.")
        try:
            embeddings[name] = similarity.read_task_embedding(path, task_id, step)
        except (FileNotFoundError, PromptFileError, ValueError) as error:
            raise ToolError(str(error)) from error
    if len(embeddings) < 2:
        raise ToolError("Give at least two prompts to compare.")
    if target is not None and target not in embeddings:
        raise ToolError(f"--target {target!r} is none of the prompts {list(embeddings)}.")
    matrices, sections = {}, []
    for each in similarity.MEASURES:
        try:
            names, matrices[each] = similarity.similarity_matrix(embeddings, each)
        except ValueError as error:
            raise ToolError(str(error)) from error
        sections.append(f"## {each}\n\n{similarity.format_table(names, matrices[each])}")
    if target is not None:
        sources = {n: v for n, v in embeddings.items() if n != target}
        ranked = similarity.rank_sources(embeddings[target], sources, measure)
        other = [m for m in similarity.MEASURES if m != measure][0]
        lines = [f"| rank | source | {measure} | {other} |", "|---|---|---|---|"]
        for rank, (name, value) in enumerate(ranked, 1):
            second = similarity.similarity(embeddings[target], sources[name], other)
            lines.append(f"| {rank} | {name} | {value:.3f} | {second:.3f} |")
        sections.insert(0, f"## Sources for {target} (by {measure})\n\n" + "\n".join(lines))
    return "# Prompt similarity (SPoT)\n\n" + "\n\n".join(sections) + "\n", names, matrices


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the report; writes the heat map and the Markdown file when asked."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompts", nargs="+", help="[NAME=]PATH[:TASK_ID] of each prompt")
    parser.add_argument("--target", help="the NAME of the target: rank the others as sources")
    parser.add_argument("--measure", choices=similarity.MEASURES, default=similarity.COSINE_AVERAGE)
    parser.add_argument("--step", type=int, help="prompts/step_<STEP> of every run folder")
    parser.add_argument("--heatmap", help="PNG file for the heat maps of both measures")
    parser.add_argument("--output", help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    try:
        text, names, matrices = report(args.prompts, args.target, args.measure, args.step)
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.heatmap:
        similarity.plot_heatmaps(names, matrices, args.heatmap)
    if args.output:
        pathlib.Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
