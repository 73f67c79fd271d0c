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
from prompt_tuning.analysis.errors import AnalysisError  # noqa: E402


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
        text, names, matrices = similarity.report(
            args.prompts, args.target, args.measure, args.step
        )
    except AnalysisError as error:
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
